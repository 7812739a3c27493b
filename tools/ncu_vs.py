"""Profile target for ncu: convert_vertical_slash_indexes_mergehead at the bench's ctx 131072
uniform shape (B1 H32, NNZ_V 1000, NNZ_S 6000), a few calls. CTX, NNZ_V and NNZ_S (environment)
pick another bench shape, e.g. CTX=4096 NNZ_V=64 NNZ_S=64."""
import os

import torch

from cupy_ops import _bench, convert_vertical_slash_indexes_mergehead

ctx, nnz_v, nnz_s = (int(os.environ.get(k, d)) for k, d in
                    (("CTX", 131072), ("NNZ_V", 1000), ("NNZ_S", 6000)))
q, kv, V, S = _bench._vs_inputs(torch, ctx, nnz_v, nnz_s, "uniform", 0)
n_rows = -(-ctx // 64)
H = _bench.VS_HEADS
outs = tuple(torch.empty(s, dtype=torch.int32, device="cuda") for s in
             ((1, H, n_rows), (1, H, n_rows, nnz_s), (1, H, n_rows), (1, H, n_rows, nnz_v)))
vc = torch.full((H,), nnz_v, dtype=torch.int32, device="cuda")
sc = torch.full((H,), nnz_s, dtype=torch.int32, device="cuda")
for _ in range(3):
    convert_vertical_slash_indexes_mergehead(q, kv, V, S, vc, sc, ctx, 64, 64, True, out=outs)
torch.cuda.synchronize()
