"""Where two kernels' instructions and stall samples differ, from ncu SASS pages (CSV files that
tools/ncu_hot.py writes, e.g. device_session.sh's ncu_paged step: $OUT/ncu_sass_OP_BN.csv). No GPU.

    python3 tools/ncu_sass_compare.py A.csv[.gz] [B.csv[.gz]] [--loop EXEC] [--once EXEC]

For each file: warp instructions and stall samples in total, then by execution count (a line
executed once per tile of every warp has the loop's count, once per warp the CTA's), then the
runs of consecutive once-per-warp lines with their samples (the prologue and the epilogue), and
the lines after which most warps wait (a barrier's stall lands on the next instruction). With
two files: which opcodes each count class gained or lost. --loop / --once name the counts when
they are not the two largest classes.
"""
import argparse
import csv
import gzip
import io
from collections import Counter


def load(path):
    """(source, executions, stall samples) per SASS line."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = [line for line in f.read().splitlines() if line.startswith('"')]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    hi = next(i for i, r in enumerate(rows) if "Source" in r)
    head, body = rows[hi], rows[hi + 1:]
    src = head.index("Source")
    execd = next(i for i, h in enumerate(head) if h.startswith("Instructions Executed"))
    samples = next(i for i, h in enumerate(head) if h.startswith("Warp Stall Sampling (All"))

    def num(x):
        try:
            return float(x.replace(",", ""))
        except ValueError:
            return 0.0
    return [(r[src].strip(), num(r[execd]), num(r[samples])) for r in body if len(r) > max(execd, samples)]


def opcode(source):
    words = source.split()
    word = words[1] if words and words[0].startswith("@") and len(words) > 1 else (words[0] if words else "")
    return word.split(".")[0]


def classes(rows):
    """Execution count -> (lines, instructions, samples), largest instruction totals first."""
    acc = {}
    for _, e, s in rows:
        n, t, x = acc.get(e, (0, 0.0, 0.0))
        acc[e] = (n + 1, t + e, x + s)
    return sorted(acc.items(), key=lambda kv: -kv[1][1])


def summary(path, rows, loop, once):
    total, samples = sum(e for _, e, _ in rows), sum(s for _, _, s in rows)
    print(f"== {path}: {total / 1e6:.2f} M warp instructions, {samples:.0f} stall samples")
    for e, (n, t, x) in classes(rows)[:8]:
        print(f"  exec {e:>9.0f}: {n:5d} lines, {t / 1e6:6.2f} M instructions, {x:6.0f} samples "
              f"({100 * x / max(samples, 1):4.1f}%)")
    runs, start = [], None
    for i, (_, e, _) in enumerate(rows + [("", -1, 0)]):
        if e == once and start is None:
            start = i
        elif e != once and start is not None:
            runs.append((start, i - 1))
            start = None
    print(f"  runs of once-per-warp lines (exec {once:.0f}) with >= 1% of the samples:")
    for a, b in runs:
        x = sum(s for _, _, s in rows[a:b + 1])
        if x >= 0.01 * samples:
            print(f"    lines {a}-{b} ({b - a + 1}): {x:.0f} samples, from {rows[a][0][:60]}")
    print("  lines with the most samples (a wait shows on the instruction after it):")
    for i in sorted(sorted(range(len(rows)), key=lambda k: -rows[k][2])[:8]):
        prev = rows[i - 1][0][:40] if i else ""
        print(f"    {i:5d} exec {rows[i][1]:>8.0f} samples {rows[i][2]:5.0f}  after {prev:40s} | {rows[i][0][:50]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--loop", type=float, help="execution count of the loop's lines")
    ap.add_argument("--once", type=float, help="execution count of once-per-warp lines")
    args = ap.parse_args()
    data = [load(f) for f in args.files[:2]]
    top = [e for e, _ in classes(data[0])[:2]]
    loop = args.loop or max(top)
    once = args.once or min(top)
    for path, rows in zip(args.files, data):
        summary(path, rows, loop, once)
    if len(data) == 2:
        for e, label in ((loop, "loop"), (once, "once per warp")):
            ops = [Counter(opcode(s) for s, x, _ in rows if x == e) for rows in data]
            diff = sorted(((ops[1][k] - ops[0][k], k) for k in set(ops[0]) | set(ops[1])), reverse=True)
            print(f"{label} (exec {e:.0f}) lines, second file minus first: "
                  + ", ".join(f"{k} {d:+d}" for d, k in diff if d))


if __name__ == "__main__":
    main()
