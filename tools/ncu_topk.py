"""Profile target for ncu: top_k_per_row_decode, K 2048, ROWS x COLS (environment; default the
bench's 64 x 131072), a few calls."""
import os

import torch

from cupy_ops import top_k_per_row_decode

rows, cols, k = int(os.environ.get("ROWS", 64)), int(os.environ.get("COLS", 131072)), 2048
x = torch.randn(rows, cols, device="cuda")
sl = torch.full((rows,), cols, dtype=torch.int32, device="cuda")
idx = torch.empty(rows, k, dtype=torch.int32, device="cuda")
for _ in range(4):
    top_k_per_row_decode(x, 1, sl, idx, rows, cols, 1, k)
torch.cuda.synchronize()
