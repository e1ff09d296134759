"""explorer: sweeps over the LilNetX tradeoff, tracking, and the ``lilnetx`` command line."""
