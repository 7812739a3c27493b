"""`python -m cupy_ops bench OP --plot FILE.png`: the bench rows as a bar chart (matplotlib).

One figure per run, two panels: time of our kernel vs the in-run baseline for every case (log
scale), and the speed-up (baseline / ours). What counts as "ours" and "baseline" per op is the
table below; the numbers are the same ones the bench prints and writes with --json.
"""

from __future__ import annotations

# op -> (label of a row, our time key, baseline time key, baseline name)
SERIES = {
    "merge_attn_states": (lambda r: f"{r['T']}x{r['H']}x{r['D']} {r['dtype']}", "us", "torch_us",
                          "torch (fp32 math)"),
    "paged_attention": (lambda r: r["config"], "v1_us", "sdpa_us", "dense SDPA"),
    "top_k_per_row": (lambda r: r["case"], "us", "torch_topk_us", "torch.topk"),
    "vertical_slash": (lambda r: r["config"], "mergehead_us", "sdpa_us", "causal SDPA prefill"),
}


def series(op: str, rows: list[dict]) -> tuple[list[str], list[float], list[float], str]:
    """(labels, ours_us, baseline_us, baseline_name); rows without a baseline are skipped."""
    label, ours, base, base_name = SERIES[op]
    kept = [r for r in rows if r.get(base)]
    return [label(r) for r in kept], [r[ours] for r in kept], [r[base] for r in kept], base_name


def plot(op: str, rows: list[dict], path: str, device: str = "") -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker  # noqa: F401 - used as matplotlib.ticker
    except ImportError:
        raise RuntimeError("--plot needs matplotlib (pip install matplotlib)") from None
    labels, ours, base, base_name = series(op, rows)
    if not labels:
        raise RuntimeError(f"bench {op}: no rows with a baseline to plot")
    y = range(len(labels))
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 0.5 * len(labels) + 1.5), sharey=True)
    ax_t.barh([i + 0.2 for i in y], ours, height=0.4, label="cupy-ops")
    ax_t.barh([i - 0.2 for i in y], base, height=0.4, label=base_name)
    ax_t.set_xscale("log")
    ax_t.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded minor labels
    ax_t.set_xlabel("GPU time per call (us, log)")
    ax_t.set_yticks(list(y), labels)
    ax_t.invert_yaxis()
    ax_t.legend(loc="best", fontsize="small")
    ax_s.barh(list(y), [b / o for o, b in zip(ours, base)], color="tab:green")
    ax_s.axvline(1.0, color="gray", lw=1)
    ax_s.set_xlabel(f"{base_name} time / ours (x)")
    fig.suptitle(f"{op}" + (f" on {device}" if device else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
