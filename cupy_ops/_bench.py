"""`python -m cupy_ops bench OP`: GPU timings with baselines measured in the same run.

Method (see docs/perf.md): CUDA events around each call, a GPU sleep queued before each timed
call so the host's enqueue time is not counted (pure GPU time), warm-up first, the median of
many runs, and input sets rotated so that the working set exceeds the L2 cache. Also reported:
"stream" time per call for back-to-back calls (what a caller sees when the host is the
bottleneck) and host time per call. Baselines: a device-to-device copy (bandwidth ceiling) and
a plain torch implementation of the same formula.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time

L2_ROTATION_BYTES = 2 * 50 * 2**20   # twice the H100's 50 MB L2
MAX_ROTATION_BYTES = 8 * 2**30
SLEEP_CYCLES = 200_000               # ~100 us at 1.98 GHz: longer than any host enqueue here

# The vLLM columns are constants from the issues, not measured in the run: say so under each table.
VLLM_NOTE = "vLLM columns: the issues' numbers for vLLM's kernels on an H100 80GB (not measured in this run)"

# vLLM's own CUDA kernel on our H100 (issue #3; built from vLLM's sources): size -> us.
VLLM_US = {(256, 16, 128, "float32"): 7.20, (4096, 32, 128, "bfloat16"): 38.6,
           (65536, 32, 128, "bfloat16"): 539.0}


def _torch():
    try:
        import torch
    except ImportError:
        raise SystemExit("bench needs a CUDA GPU and torch with CUDA (torch is not installed)") from None
    if not torch.cuda.is_available():
        raise SystemExit("bench needs a CUDA GPU and torch with CUDA")
    return torch


def gpu_time_us(fn, reps: int = 200, warmup: int = 20, sets: int = 1) -> float:
    """Median GPU time of fn(i) in microseconds (host enqueue hidden behind a GPU sleep).

    The warm-up calls every one of the ``sets`` rotated input sets at least once: an op's first
    call on a set builds its launch plan, host work the sleep may not hide (top-k 1 x 32768
    rotates 800 sets; with 20 warm-up calls most timed calls were first calls, 18-61 us)."""
    torch = _torch()
    for i in range(max(warmup, sets)):
        fn(i)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        torch.cuda._sleep(SLEEP_CYCLES)
        starts[i].record()
        fn(i)
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))


def stream_time_us(fn, reps: int = 200) -> float:
    """Average time per call for back-to-back calls, between two events (host-bound if slow)."""
    torch = _torch()
    fn(0)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(reps):
        fn(i)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps


def graph_time_us(fn, calls: int, replays: int = 20) -> float:
    """GPU time per call inside a captured CUDA graph of ``calls`` back-to-back calls, as vLLM
    runs decode: launch gaps shrink to the graph's, so small ops show their own cost."""
    torch = _torch()
    fn(0)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        torch.cuda._sleep(SLEEP_CYCLES)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def host_time_us(fn, reps: int = 2000, rounds: int = 5) -> float:
    """Host time per call: the best of ``rounds`` loops of ``reps`` calls (a loop that met a GC
    pause or a descheduled CPU says nothing about the call's cost)."""
    torch = _torch()
    fn(0)
    torch.cuda.synchronize()
    best = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(reps):
            fn(i)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        us = (t1 - t0) / reps * 1e6
        best = us if best is None else min(best, us)
    return best


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy ceiling, bytes read + written per second (1 GiB buffers)."""
    torch = _torch()
    n = 2**30
    src, dst = torch.empty(n, dtype=torch.uint8, device="cuda"), torch.empty(n, dtype=torch.uint8, device="cuda")
    src.random_()
    us = gpu_time_us(lambda i: dst.copy_(src), reps=30, warmup=3)
    return 2 * n / us / 1e3


def sm_clock_mhz() -> float:
    """The SM clock the GPU runs at now: a clock64 spin of known cycles (torch.cuda._sleep) timed
    by events. Printed with every benchmark: the latency-bound kernels (paged decode, top-k) slow
    with the SM clock while copies and dense SDPA do not, and lent cards differ (docs/perf.md)."""
    torch = _torch()
    cycles = 20_000_000  # ~10 ms
    torch.cuda._sleep(1000)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    torch.cuda.synchronize()
    return cycles / (start.elapsed_time(end) * 1e3)


_clock_at_start: list[float] = []  # the SM clock device_line printed (run_bench's JSON keeps it)


def device_line(copy_gbs: float) -> str:
    """The first line of every benchmark's table: the card, its copy ceiling and its SM clock."""
    torch = _torch()
    _clock_at_start[:] = [sm_clock_mhz()]
    return (f"device: {torch.cuda.get_device_name()}  copy ceiling {copy_gbs:.0f} GB/s (read+write), "
            f"SM clock {_clock_at_start[0]:.0f} MHz")


def same_bytes_copy_us(bytes_moved: int) -> float:
    """A device copy moving the same bytes (half read, half written), rotated like the op."""
    torch = _torch()
    half = bytes_moved // 2
    n = rotation_count(bytes_moved)
    bufs = [(torch.empty(half, dtype=torch.uint8, device="cuda"),
             torch.randint(0, 255, (half,), dtype=torch.uint8, device="cuda")) for _ in range(n)]
    return gpu_time_us(lambda i: bufs[i % n][0].copy_(bufs[i % n][1]), sets=n)


def rotation_count(set_bytes: int) -> int:
    return max(2, min(math.ceil(L2_ROTATION_BYTES / set_bytes), MAX_ROTATION_BYTES // set_bytes))


# ---------------------------------------------------------------------------------------------
# merge_attn_states

MERGE_SIZES = [(256, 16, 128, "float32"), (4096, 32, 128, "bfloat16"), (65536, 32, 128, "bfloat16"),
               (512, 32, 128, "float16"), (16912, 16, 256, "bfloat16"), (1024, 8, 80, "float16"),
               (131072, 8, 128, "float32")]
MERGE_QUICK = MERGE_SIZES[:3]


def torch_merge(out, x, p, y, s, out_lse):
    """Plain torch version of the same formula (fp32 math): the in-run baseline."""
    torch = _torch()
    p, s = p.t(), s.t()
    ninf = torch.tensor(float("-inf"), device=p.device)
    p = torch.where(torch.isinf(p), ninf, p)
    s = torch.where(torch.isinf(s), ninf, s)
    m = torch.maximum(p, s)
    wp, ws = torch.exp(p - m), torch.exp(s - m)
    z = wp + ws
    out.copy_((wp / z).unsqueeze(-1) * x.float() + (ws / z).unsqueeze(-1) * y.float())
    out_lse.copy_((m + torch.log(z)).t())


def bench_merge(sizes, copy_gbs: float) -> list[dict]:
    torch = _torch()
    from . import merge_attn_states
    rows = []
    for T, H, D, dtype in sizes:
        dt = getattr(torch, dtype)
        itemsize = torch.empty(0, dtype=dt).element_size()
        bytes_moved = 3 * T * H * D * itemsize + 3 * 4 * T * H
        n = rotation_count(bytes_moved)
        sets = []
        for _ in range(n):
            sets.append((torch.empty(T, H, D, dtype=dt, device="cuda"),
                         torch.randn(T, H, D, device="cuda").to(dt), torch.randn(H, T, device="cuda"),
                         torch.randn(T, H, D, device="cuda").to(dt), torch.randn(H, T, device="cuda"),
                         torch.empty(H, T, device="cuda")))

        def ours(i):
            o, x, p, y, s, ol = sets[i % n]
            merge_attn_states(o, x, p, y, s, ol)

        def base(i):
            o, x, p, y, s, ol = sets[i % n]
            torch_merge(o, x, p, y, s, ol)

        us = gpu_time_us(ours, sets=n)
        row = {"op": "merge_attn_states", "T": T, "H": H, "D": D, "dtype": dtype,
               "bytes": bytes_moved, "us": us, "gbs": bytes_moved / us / 1e3,
               "pct_copy": 100 * bytes_moved / us / 1e3 / copy_gbs,
               "stream_us": stream_time_us(ours), "graph_us": graph_time_us(ours, max(n, 16)),
               "torch_us": gpu_time_us(base, reps=50, sets=n),
               "vllm_us": VLLM_US.get((T, H, D, dtype))}
        row["speedup_vs_torch"] = row["torch_us"] / us
        row["copy_same_bytes_us"] = same_bytes_copy_us(bytes_moved)
        rows.append(row)
        sets = None
        torch.cuda.empty_cache()
    return rows


def print_merge(rows, copy_gbs, host_us, out=sys.stdout):
    print(device_line(copy_gbs), file=out)
    print(f"host time per call (validate + dispatch + launch, tiny problem): {host_us:.1f} us", file=out)
    print("ours us: GPU time per call (median); %copy: our GB/s over the 1 GiB copy ceiling;"
          " copy us: a copy of the same bytes, same method; stream us: back-to-back calls;"
          " graph us: per call inside a CUDA graph", file=out)
    hdr = (f"{'T x H x D':>18s} {'dtype':9s} {'ours us':>9s} {'GB/s':>7s} {'%copy':>6s} {'copy us':>8s} "
           f"{'stream us':>9s} {'graph us':>8s} {'torch us':>9s} {'x torch':>7s} {'vLLM us':>8s}")
    print(VLLM_NOTE, file=out)
    print(hdr, file=out)
    for r in rows:
        vllm = f"{r['vllm_us']:8.1f}" if r["vllm_us"] else f"{'-':>8s}"
        print(f"{r['T']:>7d} x{r['H']:>3d} x{r['D']:>4d} {r['dtype']:9s} {r['us']:9.2f} {r['gbs']:7.0f} "
              f"{r['pct_copy']:6.1f} {r['copy_same_bytes_us']:8.2f} {r['stream_us']:9.2f} {r['graph_us']:8.2f} {r['torch_us']:9.1f} {r['speedup_vs_torch']:7.1f} {vllm}",
              file=out)


def merge_host_overhead_us() -> float:
    torch = _torch()
    from . import merge_attn_states
    x = torch.randn(16, 4, 128, device="cuda", dtype=torch.float16)
    p = torch.randn(4, 16, device="cuda")
    out, out_lse = torch.empty_like(x), torch.empty_like(p)
    return host_time_us(lambda i: merge_attn_states(out, x, p, x, p, out_lse))


# ---------------------------------------------------------------------------------------------
# paged_attention

# (name, batch, seq_len, Hq, Hkv, head_size, block_size, dtype, kv_cache_dtype)
PAGED_CONFIGS = [
    ("B64 L4096", 64, 4096, 32, 8, 128, 16, "bfloat16", "auto"),
    ("B8 L4096", 8, 4096, 32, 8, 128, 16, "bfloat16", "auto"),
    ("B1 L32768", 1, 32768, 32, 8, 128, 16, "bfloat16", "auto"),
    ("B256 L1024", 256, 1024, 32, 8, 128, 16, "bfloat16", "auto"),
    ("Hq64 fp16 B8 L4096", 8, 4096, 64, 8, 128, 16, "float16", "auto"),
    ("fp8e4m3 B64 L4096", 64, 4096, 32, 8, 128, 16, "bfloat16", "fp8_e4m3"),
    # Beyond the table: a group of 16 (v2 runs the parts kernel there), MQA, and a head
    # size below its register bound (the run-time loop bounds, not EXACT's constants).
    ("Hq64/Hkv4 B64 L4096", 64, 4096, 64, 4, 128, 16, "bfloat16", "auto"),
    ("MQA Hkv1 B64 L4096", 64, 4096, 32, 1, 128, 16, "bfloat16", "auto"),
    ("D96 B64 L4096", 64, 4096, 32, 8, 96, 16, "bfloat16", "auto"),
]
# vLLM's kernels and dense SDPA on our H100 (issue #4), us: name -> (v1, v2, sdpa)
VLLM_PAGED_US = {"B64 L4096": (1087, 893, 353), "B8 L4096": (269, 149, 55.1),
                 "B1 L32768": (2031, 153, 55.3), "B256 L1024": (908, 896, 355),
                 "Hq64 fp16 B8 L4096": (140, 153, 55.5), "fp8e4m3 B64 L4096": (887, 875, None)}


def _paged_set(torch, B, L, Hq, Hkv, D, BS, dtype, kv, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dt = getattr(torch, dtype)
    fp8 = kv != "auto"
    x = 16 if fp8 else 16 // torch.empty(0, dtype=dt).element_size()
    nb = B * (-(-L // BS))
    kf = torch.randn(nb, Hkv, D // x, BS, x, device="cuda", generator=g)
    vf = torch.randn(nb, Hkv, D, BS, device="cuda", generator=g)
    if fp8:
        kc, vc = kf.to(torch.float8_e4m3fn).view(torch.uint8), vf.to(torch.float8_e4m3fn).view(torch.uint8)
    else:
        kc, vc = kf.to(dt), vf.to(dt)
    del kf, vf
    table = torch.randperm(nb, device="cuda", generator=g).int().view(B, -1)
    lens = torch.full((B,), L, dtype=torch.int32, device="cuda")
    q = torch.randn(B, Hq, D, device="cuda", generator=g).to(dt)
    return q, kc, vc, table, lens


def bench_paged(copy_gbs: float, configs=None) -> list[dict]:
    torch = _torch()
    from . import paged_attention_v1, paged_attention_v2
    rows = []
    for name, B, L, Hq, Hkv, D, BS, dtype, kv in configs or PAGED_CONFIGS:
        elem = 1 if kv != "auto" else torch.empty(0, dtype=getattr(torch, dtype)).element_size()
        q_elem = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
        kv_bytes = 2 * B * L * Hkv * D * elem
        bytes_moved = kv_bytes + 2 * B * Hq * D * q_elem
        n = rotation_count(bytes_moved)
        sets = [_paged_set(torch, B, L, Hq, Hkv, D, BS, dtype, kv, i) for i in range(n)]
        scale = D ** -0.5
        one = torch.ones((), device="cuda")
        P = -(-L // 512)
        outs = [torch.empty_like(s[0]) for s in sets]
        scratch = [(torch.empty(B, Hq, P, device="cuda"), torch.empty(B, Hq, P, device="cuda"),
                    torch.empty(B, Hq, P, D, dtype=s[0].dtype, device="cuda")) for s in sets]

        def v1(i):
            q, kc, vc, table, lens = sets[i % n]
            paged_attention_v1(outs[i % n], q, kc, vc, Hkv, scale, table, lens, BS, L, None, kv, one, one)

        def v2(i):
            q, kc, vc, table, lens = sets[i % n]
            es, ml, tmp = scratch[i % n]
            paged_attention_v2(outs[i % n], es, ml, tmp, q, kc, vc, Hkv, scale, table, lens, BS, L,
                               None, kv, one, one)

        row = {"op": "paged_attention", "config": name, "bytes": bytes_moved,
               "v1_us": gpu_time_us(v1, reps=100, sets=n), "v2_us": gpu_time_us(v2, reps=100, sets=n)}
        row["v1_graph_us"] = graph_time_us(v1, max(n, 4))
        sets = scratch = outs = None
        torch.cuda.empty_cache()
        if kv == "auto":
            dt = getattr(torch, dtype)
            dense = [(torch.randn(B, Hq, 1, D, device="cuda").to(dt),
                      torch.randn(B, Hkv, L, D, device="cuda").to(dt),
                      torch.randn(B, Hkv, L, D, device="cuda").to(dt)) for _ in range(n)]
            sdpa = torch.nn.functional.scaled_dot_product_attention
            row["sdpa_us"] = gpu_time_us(lambda i: sdpa(*dense[i % n], enable_gqa=True), reps=100, sets=n)
            del dense
            torch.cuda.empty_cache()
        else:
            row["sdpa_us"] = None
        best = min(row["v1_us"], row["v2_us"])
        row["gbs_v1"] = bytes_moved / row["v1_us"] / 1e3
        row["pct_copy_v1"] = 100 * row["gbs_v1"] / copy_gbs
        row["vllm"] = VLLM_PAGED_US.get(name)
        row["best_us"] = best
        rows.append(row)
    return rows


def paged_host_overhead_us() -> tuple[float, float]:
    """Host time per call (v1, v2) on a tiny problem, where the GPU is never the bottleneck."""
    torch = _torch()
    from . import paged_attention_v1, paged_attention_v2
    q, kc, vc, table, lens = _paged_set(torch, 1, 64, 32, 8, 128, 16, "bfloat16", "auto", 0)
    out = torch.empty_like(q)
    es, ml = torch.empty(1, 32, 1, device="cuda"), torch.empty(1, 32, 1, device="cuda")
    tmp = torch.empty(1, 32, 1, 128, dtype=q.dtype, device="cuda")
    one = torch.ones((), device="cuda")
    v1 = host_time_us(lambda i: paged_attention_v1(out, q, kc, vc, 8, 0.1, table, lens, 16, 64, None, "auto", one, one))
    v2 = host_time_us(lambda i: paged_attention_v2(out, es, ml, tmp, q, kc, vc, 8, 0.1, table, lens, 16, 64,
                                                   None, "auto", one, one))
    return v1, v2


def print_paged(rows, copy_gbs, out=sys.stdout, host=None):
    print(device_line(copy_gbs), file=out)
    if host:
        print(f"host time per call (tiny problem): v1 {host[0]:.1f} us, v2 {host[1]:.1f} us", file=out)
    print("v1/v2 us: GPU time per call (median); GB/s and %copy for v1 (KV + q + out bytes);"
          " x sdpa: v1 time / dense SDPA time (enable_gqa, contiguous KV)", file=out)
    print(VLLM_NOTE, file=out)
    print(f"{'config':20s} {'v1 us':>8s} {'v2 us':>8s} {'v1 graph':>8s} {'GB/s':>6s} {'%copy':>6s} "
          f"{'sdpa us':>8s} {'x sdpa':>6s} {'vLLM v1':>8s} {'vLLM v2':>8s}", file=out)
    for r in rows:
        sdpa = f"{r['sdpa_us']:8.1f}" if r["sdpa_us"] else f"{'-':>8s}"
        ratio = f"{r['v1_us'] / r['sdpa_us']:6.2f}" if r["sdpa_us"] else f"{'-':>6s}"
        vl = r["vllm"] or (None, None, None)
        print(f"{r['config']:20s} {r['v1_us']:8.1f} {r['v2_us']:8.1f} {r['v1_graph_us']:8.1f} "
              f"{r['gbs_v1']:6.0f} {r['pct_copy_v1']:6.1f} {sdpa} {ratio} {vl[0] or '-':>8} {vl[1] or '-':>8}",
              file=out)


# ---------------------------------------------------------------------------------------------
# convert_vertical_slash_indexes(_mergehead)

# (name, context, NNZ_V, NNZ_S, slash placement); B = 1, H = 32, q = kv = context, causal, 64x64.
VS_CONFIGS = [
    ("ctx 4096 NNZ 64", 4096, 64, 64, "uniform"),
    ("ctx 32768 uniform", 32768, 1000, 6000, "uniform"),
    ("ctx 32768 near-diag", 32768, 1000, 6000, "near-diagonal"),
    ("ctx 131072 uniform", 131072, 1000, 6000, "uniform"),
    ("ctx 131072 near-diag", 131072, 1000, 6000, "near-diagonal"),
]
VS_QUICK = VS_CONFIGS[:3]
VS_HEADS = 32
# vLLM's kernel built from its sources on our H100 (issue #6), us: name -> (plain, mergehead).
VLLM_VS_US = {"ctx 32768 uniform": (1548, 1307), "ctx 131072 near-diag": (3279, 2982)}


def _vs_inputs(torch, ctx, nnz_v, nnz_s, placement, seed):
    """Sorted unique verticals in [0, ctx); slashes unique, descending, including 0: spread over
    [0, ctx) ("uniform") or drawn from the 2*NNZ_S diagonals nearest the main one."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    span = ctx if placement == "uniform" else min(ctx, 2 * nnz_s)
    V = torch.stack([torch.randperm(ctx, generator=g, device="cuda")[:nnz_v].sort().values
                     for _ in range(VS_HEADS)])
    S = torch.stack([torch.randperm(span, generator=g, device="cuda")[:nnz_s].sort(descending=True).values
                     for _ in range(VS_HEADS)])
    S[:, -1] = 0
    lens = torch.full((1,), ctx, dtype=torch.int32, device="cuda")
    return lens, lens.clone(), V.int()[None].contiguous(), S.int()[None].contiguous()


def bench_vertical_slash(copy_gbs: float, configs=None) -> list[dict]:
    torch = _torch()
    from . import convert_vertical_slash_indexes, convert_vertical_slash_indexes_mergehead
    rows = []
    for name, ctx, nnz_v, nnz_s, placement in configs or VS_CONFIGS:
        q, kv, V, S = _vs_inputs(torch, ctx, nnz_v, nnz_s, placement, 0)
        n_rows = -(-ctx // 64)
        shapes = ((1, VS_HEADS, n_rows), (1, VS_HEADS, n_rows, nnz_s), (1, VS_HEADS, n_rows),
                  (1, VS_HEADS, n_rows, nnz_v))
        outs = tuple(torch.empty(s, dtype=torch.int32, device="cuda") for s in shapes)
        vc = torch.full((VS_HEADS,), nnz_v, dtype=torch.int32, device="cuda")
        sc = torch.full((VS_HEADS,), nnz_s, dtype=torch.int32, device="cuda")
        out_bytes = 4 * VS_HEADS * n_rows * (2 + nnz_s + nnz_v)

        def plain(i):
            convert_vertical_slash_indexes(q, kv, V, S, ctx, 64, 64, True, out=outs)

        def merged(i):
            convert_vertical_slash_indexes_mergehead(q, kv, V, S, vc, sc, ctx, 64, 64, True, out=outs)

        reps = 50 if ctx > 32768 else 200
        row = {"op": "vertical_slash", "config": name, "ctx": ctx, "nnz_v": nnz_v, "nnz_s": nnz_s,
               "placement": placement, "plain_us": gpu_time_us(plain, reps=reps),
               "mergehead_us": gpu_time_us(merged, reps=reps), "plain_out_bytes": out_bytes}
        counts = outs[0].long().sum().item(), outs[2].long().sum().item()
        row["defined_bytes"] = 4 * (2 * VS_HEADS * n_rows + counts[0] + counts[1])
        row["plain_pct_copy"] = 100 * out_bytes / row["plain_us"] / 1e3 / copy_gbs
        row["alloc_plain_us"] = gpu_time_us(
            lambda i: convert_vertical_slash_indexes(q, kv, V, S, ctx, 64, 64, True), reps=reps)
        outs = None  # free before SDPA's inputs (ctx 131072: 1.8 GB)
        torch.cuda.empty_cache()
        dense = [torch.randn(1, VS_HEADS, ctx, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
        sdpa = torch.nn.functional.scaled_dot_product_attention
        row["sdpa_us"] = gpu_time_us(lambda i: sdpa(*dense, is_causal=True),
                                     reps=10 if ctx > 32768 else 30, warmup=3)
        dense = None
        torch.cuda.empty_cache()
        row["vllm"] = VLLM_VS_US.get(name)
        rows.append(row)
    return rows


def print_vertical_slash(rows, copy_gbs, out=sys.stdout):
    print(device_line(copy_gbs), file=out)
    print("B=1 H=32 causal, block 64x64, q = kv = ctx. GPU us per call (median), out= buffers. "
          "plain: zero-fills every output element (bytes = out MB); mergehead (counts = NNZ): "
          "writes the defined entries only (def MB); alloc: plain op allocating its outputs; "
          "%sdpa: time / torch causal SDPA prefill (d=128 bf16) in the same run", file=out)
    print(VLLM_NOTE, file=out)
    print(f"{'config':22s} {'plain us':>9s} {'out MB':>7s} {'%copy':>6s} {'alloc us':>9s} "
          f"{'merge us':>9s} {'def MB':>7s} {'sdpa us':>9s} {'%sdpa pl':>8s} {'%sdpa mh':>8s} "
          f"{'vLLM pl':>8s} {'vLLM mh':>8s}", file=out)
    for r in rows:
        vl = r["vllm"] or ("-", "-")
        print(f"{r['config']:22s} {r['plain_us']:9.1f} {r['plain_out_bytes'] / 1e6:7.1f} "
              f"{r['plain_pct_copy']:6.1f} {r['alloc_plain_us']:9.1f} {r['mergehead_us']:9.1f} "
              f"{r['defined_bytes'] / 1e6:7.1f} {r['sdpa_us']:9.1f} "
              f"{100 * r['plain_us'] / r['sdpa_us']:8.2f} {100 * r['mergehead_us'] / r['sdpa_us']:8.2f} "
              f"{vl[0]:>8} {vl[1]:>8}", file=out)


def run_bench(op: str, quick: bool = False, json_path: str | None = None,
              plot_path: str | None = None) -> int:
    import importlib.util
    if plot_path and importlib.util.find_spec("matplotlib") is None:  # fail before the GPU work
        raise RuntimeError("--plot needs matplotlib (pip install matplotlib)")
    copy_gbs = copy_bandwidth_gbs()
    rows, extra = _run_bench(op, quick, copy_gbs)
    if json_path:
        with open(json_path, "w") as f:
            # The clock as printed before the timings and again after them: lent cards throttle
            # (docs/perf.md), and the latency-bound kernels follow the SM clock.
            clocks = {"sm_clock_mhz": _clock_at_start[0] if _clock_at_start else None,
                      "sm_clock_mhz_after": sm_clock_mhz()}
            json.dump({"copy_gbs": copy_gbs, **clocks, **extra, "rows": rows}, f, indent=1)
    if plot_path:
        from ._plot import plot
        plot(op, rows, plot_path, _torch().cuda.get_device_name())
        print(f"plot written to {plot_path}")
    return 0


def _run_bench(op: str, quick: bool, copy_gbs: float) -> tuple[list[dict], dict]:
    """Run and print one op's benchmark; returns its rows and extra facts for the JSON."""
    if op == "merge_attn_states":
        rows = bench_merge(MERGE_QUICK if quick else MERGE_SIZES, copy_gbs)
        host_us = merge_host_overhead_us()
        print_merge(rows, copy_gbs, host_us)
        return rows, {"host_us": host_us}
    if op == "paged_attention":
        rows = bench_paged(copy_gbs, PAGED_CONFIGS[:2] if quick else None)
        host = paged_host_overhead_us()
        print_paged(rows, copy_gbs, host=host)
        return rows, {"host_us": host}
    if op == "top_k_per_row":
        from ._bench_top_k import QUICK, bench_top_k, host_overhead_us, print_top_k
        rows = bench_top_k(copy_gbs, QUICK if quick else None)
        host = host_overhead_us()
        print_top_k(rows, copy_gbs, host)
        return rows, {"host_us": host}
    if op == "vertical_slash":
        rows = bench_vertical_slash(copy_gbs, VS_QUICK if quick else None)
        print_vertical_slash(rows, copy_gbs)
        return rows, {}
    raise SystemExit(f"no benchmark for {op}")
