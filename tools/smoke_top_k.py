"""Quick device smoke test of every top-k cluster size (catches hangs and crashes early)."""
import sys
import time

import numpy as np
import torch

import cupy_ops
from cupy_ops.ops import top_k_per_row as m
from cupy_ops.reference import top_k_per_row as ref

for c in (1, 2, 4, 8):
    m.launch_shape = lambda *a, c=c: c
    m._PLANS.clear()
    for cols, k in ((3000, 2048), (40000, 2048), (300000, 512)):
        x = torch.randn(3, cols, device="cuda")
        sl = torch.tensor([cols, cols // 2, 100], dtype=torch.int32, device="cuda")
        idx = torch.full((3, k), -7, dtype=torch.int32, device="cuda")
        t = time.time()
        cupy_ops.top_k_per_row_decode(x, 1, sl, idx, 3, cols, 1, k)
        torch.cuda.synchronize()
        got = idx.cpu().numpy()
        want = ref.top_k_per_row_decode(x.cpu().numpy(), 1, sl.cpu().numpy(), 3, cols, 1, k)
        lens = sl.cpu().numpy()
        want[lens > k] = np.sort(want[lens > k], 1)
        ok = np.array_equal(got, want)
        print(f"C={c} cols={cols} K={k}: {'ok' if ok else 'MISMATCH'} {time.time() - t:.2f}s", flush=True)
        if not ok:
            bad = np.argwhere(got != want)[:5]
            print("  first diffs", [(int(r), int(j), int(got[r, j]), int(want[r, j])) for r, j in bad])
sys.exit(0)
