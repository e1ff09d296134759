"""dashboards: the Dash Pareto explorer."""
