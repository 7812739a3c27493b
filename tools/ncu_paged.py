"""Profile target for ncu: a few paged_attention_v1 calls at the B64 L4096 shapes (bf16 and fp8)."""
import sys

import torch

from cupy_ops import _bench, paged_attention_v1

kv = sys.argv[1] if len(sys.argv) > 1 else "auto"
q, kc, vc, table, lens = _bench._paged_set(torch, 64, 4096, 32, 8, 128, 16, "bfloat16", kv, 0)
out = torch.empty_like(q)
one = torch.ones((), device="cuda")
for _ in range(3):
    paged_attention_v1(out, q, kc, vc, 8, 128 ** -0.5, table, lens, 16, 4096, None, kv, one, one)
torch.cuda.synchronize()
