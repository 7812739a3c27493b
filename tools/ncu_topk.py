"""Profile target for ncu: top_k_per_row_decode at the bench's 64 x 131072, K 2048 shape (the
cluster path, 1024 threads), a few calls."""
import torch

from cupy_ops import top_k_per_row_decode

rows, cols, k = 64, 131072, 2048
x = torch.randn(rows, cols, device="cuda")
sl = torch.full((rows,), cols, dtype=torch.int32, device="cuda")
idx = torch.empty(rows, k, dtype=torch.int32, device="cuda")
for _ in range(4):
    top_k_per_row_decode(x, 1, sl, idx, rows, cols, 1, k)
torch.cuda.synchronize()
