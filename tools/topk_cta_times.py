"""Summarise the per-CTA lines of a top-k build with CUPY_OPS_TOPK_CTA_TIMES (cuda_src/top_k_per_row.cu):

    python3 tools/exp_top_k.py --no-timing --define CUPY_OPS_TOPK_CTA_TIMES --case 3 --reps 1 > f.txt
    python3 tools/exp_top_k.py --define CUPY_OPS_TOPK_CTA_TIMES --case 3 --reps 1 > f.txt  # with phases
    python3 tools/topk_cta_times.py f.txt

Per launch: how far apart the CTAs start (%globaltimer), the spread of their lengths (their own
SM's cycles), and with the phase marks (timing build) each phase's median and maximum over the
CTAs and its correlation with the CTA's length: which phase makes the slowest CTA, the one the
kernel's time is.
"""
import sys

import numpy as np

PHASES = ["range", "first loads", "pass0 loop", "barrier", "find_bin", "gather", "barrier",
          "refine", "counts", "offsets", "write"]


def launches(path, gap_ns=20000):
    """CTA lines grouped by launch: one launch's CTAs start within ~1 us, launches tens of us apart
    (printf output is not in launch order around the tool's own lines)."""
    ctas = []
    for line in open(path):
        f = line.split()
        if f and f[0] == "ctatime":
            ctas.append((int(f[3]), int(f[5]), [int(x) for x in f[7:18]] if len(f) > 6 else []))
    ctas.sort(key=lambda c: c[0])
    groups = []
    for c in ctas:
        if not groups or c[0] - groups[-1][-1][0] > gap_ns:
            groups.append([])
        groups[-1].append(c)
    return groups


def main(path, clock_mhz=1980.0):
    for g in launches(path):
        start = np.array([v[0] for v in g])
        cycles = np.array([v[1] for v in g])
        print(f"{len(g)} CTAs: start spread {int(start.max() - start.min())} ns; length (us at {clock_mhz:.0f} MHz) "
              f"min {cycles.min() / clock_mhz:.2f} median {np.median(cycles) / clock_mhz:.2f} max {cycles.max() / clock_mhz:.2f}")
        marks = np.array([v[2] for v in g])
        if marks.size == 0:
            continue
        # refine and counts share a mark that some paths skip: report them together
        marks = np.concatenate([marks[:, :7], marks[:, 7:9].sum(axis=1, keepdims=True), marks[:, 9:]], axis=1)
        names = PHASES[:7] + ["refine+counts"] + PHASES[9:]
        for i, name in enumerate(names):
            col = marks[:, i]
            corr = np.corrcoef(col, cycles)[0, 1] if col.std() > 0 and len(g) > 2 else 0.0
            print(f"    {name:14s} median {int(np.median(col)):6d}  max {int(col.max()):6d}  corr with length {corr:5.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
