"""Profile target for ncu: a few paged_attention_v1 (or OP=v2) calls at the issue's shapes (bf16,
or the kv cache dtype in argv[1]); B and L from the environment (default B64 L4096; B256 L1024 is
the shape whose math costs twice B64's, docs/perf.md p20)."""
import os
import sys

import torch

from cupy_ops import _bench, paged_attention_v1, paged_attention_v2

kv = sys.argv[1] if len(sys.argv) > 1 else "auto"
B, L = int(os.environ.get("B", 64)), int(os.environ.get("L", 4096))
q, kc, vc, table, lens = _bench._paged_set(torch, B, L, 32, 8, 128, 16, "bfloat16", kv, 0)
out = torch.empty_like(q)
one = torch.ones((), device="cuda")
P = -(-L // 512)
es, ml = torch.empty(B, 32, P, device="cuda"), torch.empty(B, 32, P, device="cuda")
tmp = torch.empty(B, 32, P, 128, dtype=q.dtype, device="cuda")
for _ in range(3):
    if os.environ.get("OP", "v1") == "v2":
        paged_attention_v2(out, es, ml, tmp, q, kc, vc, 8, 128 ** -0.5, table, lens, 16, L, None, kv, one, one)
    else:
        paged_attention_v1(out, q, kc, vc, 8, 128 ** -0.5, table, lens, 16, L, None, kv, one, one)
torch.cuda.synchronize()
