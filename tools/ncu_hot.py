"""Print the hottest SASS lines of an ncu report: python tools/ncu_hot.py REPORT.ncu-rep [N]."""
import csv
import io
import subprocess
import sys

rep = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 60
text = subprocess.run(["ncu", "-i", rep, "--page", "source", "--csv", "--print-source", "sass"],
                      capture_output=True, text=True).stdout
if len(sys.argv) > 3:
    open(sys.argv[3], "w").write(text)
lines = [l for l in text.splitlines() if l.startswith('"')]
rows = list(csv.reader(io.StringIO("\n".join(lines))))
hi = next(i for i, r in enumerate(rows) if "Source" in r)
head = rows[hi]
rows = rows[hi:]
print([h for h in head][:12])
samp = next(i for i, h in enumerate(head) if h.startswith("Warp Stall Sampling (All") or h.startswith("Sampling Data (All"))
src = next(i for i, h in enumerate(head) if h == "Source")
addr = next((i for i, h in enumerate(head) if h == "Address"), 0)
execd = next((i for i, h in enumerate(head) if h.startswith("Instructions Executed")), None)
body = [r for r in rows[1:] if len(r) > samp]


def num(x):
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0


total = sum(num(r[samp]) for r in body)
print(f"{len(body)} SASS lines, {total:.0f} samples")
for r in sorted(body, key=lambda r: -num(r[samp]))[:n]:
    ex = r[execd] if execd is not None else ""
    print(f"{num(r[samp]):6.0f} {r[addr]:>8} exec={ex:>8}  {r[src][:110]}")
# Also the samples per 256-byte address window, to see which region of code is hot.
