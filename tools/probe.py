"""Quick device probe: does the launch path work (used while bringing the runtime up)."""
import time
import numpy as np
import torch
import cupy
import cupy_ops
from cupy_ops import _runtime
from cupy_ops.reference import merge_attn_states as ref

print("torch", torch.__version__, "cupy", cupy.__version__, "nvrtc", _runtime.nvrtc_version())
print("include dirs", _runtime.cuda_include_dirs())
T, H, D = 1000, 8, 128
for dt in (torch.float32, torch.float16, torch.bfloat16):
    x = torch.randn(T, H, D, device="cuda", dtype=dt)
    y = torch.randn(T, H, D, device="cuda", dtype=dt)
    p = torch.randn(H, T, device="cuda")
    s = torch.randn(H, T, device="cuda")
    out = torch.full((T, H, D), float("nan"), device="cuda", dtype=dt)
    olse = torch.full((H, T), float("nan"), device="cuda")
    t0 = time.perf_counter()
    cupy_ops.merge_attn_states(out, x, p, y, s, olse)
    torch.cuda.synchronize()
    print(dt, "first call s", time.perf_counter() - t0)
    r, rl = ref.merge_attn_states(x.float().cpu().numpy(), p.cpu().numpy(), y.float().cpu().numpy(), s.cpu().numpy())
    err = np.abs(out.float().cpu().numpy() - r).max()
    lerr = np.abs(olse.cpu().numpy() - rl).max()
    print(dt, "max err", err, "lse err", lerr)
# host overhead
x = torch.randn(16, 4, 128, device="cuda", dtype=torch.float16)
p = torch.randn(4, 16, device="cuda")
out = torch.empty_like(x)
for _ in range(100):
    cupy_ops.merge_attn_states(out, x, p, x, p)
torch.cuda.synchronize()
N = 2000
t0 = time.perf_counter()
for _ in range(N):
    cupy_ops.merge_attn_states(out, x, p, x, p)
t1 = time.perf_counter()
torch.cuda.synchronize()
print("host us per call", (t1 - t0) / N * 1e6)
print(_runtime.stats)
