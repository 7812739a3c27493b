"""CPU: bench --plot draws the rows the bench returns (recorded H100 runs as input)."""

import json
from pathlib import Path

import pytest

from cupy_ops import _plot

RUNS = Path(__file__).resolve().parent.parent / "docs" / "runs"
RECORDED = {"top_k_per_row": "2026-11-25-h100-bench-top-k.json",
            "vertical_slash": "2026-11-25-h100-bench-vertical-slash.json"}


@pytest.mark.parametrize("op", sorted(RECORDED))
def test_series_from_recorded_runs(op):
    rows = json.loads((RUNS / RECORDED[op]).read_text())["rows"]
    labels, ours, base, name = _plot.series(op, rows)
    assert len(labels) == len(rows) and all(o > 0 for o in ours) and all(b > 0 for b in base)


@pytest.mark.parametrize("op", sorted(RECORDED))
def test_plot_writes_a_png(op, tmp_path):
    pytest.importorskip("matplotlib")
    rows = json.loads((RUNS / RECORDED[op]).read_text())["rows"]
    out = tmp_path / f"{op}.png"
    _plot.plot(op, rows, str(out), "NVIDIA H100 80GB HBM3")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
