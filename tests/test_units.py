"""Numbers in the units people read: the metric registry's formatters and the 80-column
``lilnetx pareto`` table."""

from __future__ import annotations

import pytest

from lilnetx.metrics import format_metric, format_param, format_size, format_value


@pytest.mark.parametrize(("value", "text"), [
    (1e-4, "1e-4"), (3.2e-5, "3.2e-5"), (0.02, "0.02"), (128, "128"), (0.0, "0"),
    (12345.6, "1.2e4"), (1.5e-3, "0.0015"), ("lenet5", "lenet5"), (2.5e6, "2.5e6"),
    (-1e-5, "-1e-5"), (float("inf"), "inf"), ("x" * 100, "x" * 39 + "\u2026")])
def test_format_param(value, text):
    assert format_param(value) == text


def test_metric_units():
    assert format_metric("accuracy", 0.8853) == "88.5%"
    assert format_metric("size_bytes", 5012) == "5.0 KB"
    assert format_metric("size_bytes", 512) == "512 B"
    assert format_metric("size_bytes", 2.4e6) == "2.4 MB"
    assert format_metric("compression_ratio", 49.2) == "49x"
    assert format_metric("compression_ratio", 1.73) == "1.7x"
    assert format_metric("latency_ms", 0.8412) == "0.841 ms"
    assert format_metric("flops", 1.23e6) == "1.2 M"
    assert format_metric("flops", 2.2e9) == "2.2 G"
    assert format_metric("no_such_metric", 1234.5678) == "1235"
    assert format_metric("accuracy", None) == "-" and format_value("bytes", float("nan")) == "-"
    assert format_size(5012, 245_600) == "5.0 KB, 49x smaller"
    assert format_size(5012, None) == "5.0 KB" and format_size(0, 100) == "0 B"


def test_pareto_table_fits_80_columns():
    from rich.console import Console

    from explorer.cli import front_table, run_label

    sweep = "demo-20261203-071122-abcdef"
    assert run_label(f"{sweep}-t003", sweep) == "t003" and run_label("mine", sweep) == "mine"
    rows = [{"run_name": f"{sweep}-t{i:03d}", "run_id": "ab" * 16,
             "metrics": {"val_accuracy": 0.885 - 0.01 * i, "accuracy": 0.8801,
                         "size_bytes": 2243.0 * (i + 1),
                         "compression_ratio": 85544 / (2243 * (i + 1)),
                         "slice_sparsity": 0.4, "latency_ms": 0.1634},
             "params": {"lambda_rate": 1e-4 * (i + 1), "lambda_sparsity": 3.2e-6, "lr": 0.02,
                        "epochs": 3}} for i in range(3)]
    console = Console(width=80, record=True, color_system=None)
    console.print(front_table(rows, {"accuracy": "max", "size_bytes": "min"}, "", sweep))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for piece in ("t000", "88.5%", "88.0%", "2.2 KB", "38x", "40.0%", "0.163 ms", "rate=1e-4",
                  "slice=3.2e-6", "lr=0.02"):
        assert piece in text, piece
    assert "\u2026" not in text and "e+" not in text


def test_layer_kind_and_title():
    from lilnetx.stats import layer_kind, layer_title

    assert layer_title("features.0", [6, 1, 5, 5], 1) == "features.0 conv5x5 6x1x5x5"
    assert layer_kind([32, 1, 3, 3], 32) == "conv3x3 dw"
    assert layer_kind([64, 8, 3, 3], 32) == "conv3x3 g4"
    assert layer_kind([10, 84]) == "linear" and layer_kind([4, 4, 1, 1]) == "conv1x1"


def test_axis_ticks_in_units():
    pytest.importorskip("plotly")
    from dashboards.figures import _nice_ticks, axis_units

    assert _nice_ticks(1114, 23364, False) == [5000, 10000, 15000, 20000]
    assert _nice_ticks(1114, 230000, True) == [2000, 5000, 10000, 20000, 50000, 100000, 200000]
    ax = axis_units("size_bytes", [1114, 23364], False)
    assert ax["ticktext"] == ["5.0 KB", "10.0 KB", "15.0 KB", "20.0 KB"]
    assert axis_units("accuracy", [0.5, 0.9], False) == {"tickformat": ".0%"}
    assert axis_units("latency_ms", [0.1, 0.2], False) == {"ticksuffix": " ms"}
    assert axis_units("flops", [1e5, 3e6], True)["ticktext"][:2] == ["100 K", "200 K"]
    assert axis_units("unknown", [1, 2], False) == {}
