"""Print an ncu report's warp-stall reasons (sampled), largest first: python tools/ncu_stalls.py REPORT."""
import csv
import io
import subprocess
import sys

text = subprocess.run(["ncu", "-i", sys.argv[1], "--page", "raw", "--csv"], capture_output=True, text=True).stdout
rows = list(csv.reader(io.StringIO(text)))
head, vals = rows[0], rows[-1]
pairs = []
for h, v in zip(head, vals):
    if h.startswith("smsp__pcsamp_warps_issue_stalled_") and not h.endswith("_not_issued"):
        try:
            pairs.append((float(v.replace(",", "")), h[len("smsp__pcsamp_warps_issue_stalled_"):]))
        except ValueError:
            pass
total = sum(p for p, _ in pairs) or 1
for p, name in sorted(pairs, reverse=True)[:14]:
    print(f"{100 * p / total:5.1f}%  {name}")
