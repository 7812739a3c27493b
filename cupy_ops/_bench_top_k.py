"""`python -m cupy_ops bench top_k_per_row`: our kernels next to torch.topk, same run, same rows.

Timing method as in _bench (events, GPU sleep before each call, median, inputs rotated past L2).
Rows hold standard-normal fp32 scores. Decode rows are full (seq_len = columns, next_n = 1).
The prefill case gives each row a random range [s, s + n) inside its 8192 columns, so about
half the rows are shorter than K (identity rows); torch.topk runs over the full rows (it has no
ranges), which costs it nothing extra: its time does not depend on the values.
torch.topk baseline: values and indices, same K, sorted=False.
"""

from __future__ import annotations

import sys

from ._bench import VLLM_NOTE, _torch, device_line, gpu_time_us, graph_time_us, host_time_us, rotation_count

CASES = [  # name, op, rows, columns, K
    ("decode 64x131072 K2048", "decode", 64, 131072, 2048),
    ("decode 1x32768 K2048", "decode", 1, 32768, 2048),
    ("decode 4x163840 K2048", "decode", 4, 163840, 2048),
    ("decode 128x8192 K2048", "decode", 128, 8192, 2048),
    ("prefill 4096x8192 K2048", "prefill", 4096, 8192, 2048),
    ("decode 64x65536 K512", "decode", 64, 65536, 512),
    ("decode 64x65536 K4096", "decode", 64, 65536, 4096),
]
QUICK = CASES[:4]
# vLLM's kernels built from its sources on our H100 (issue #5), and the targets, in us.
VLLM_US = {"decode 64x131072 K2048": 81.4, "decode 1x32768 K2048": 28.4, "decode 128x8192 K2048": 12.5}
TARGET_US = {"decode 64x131072 K2048": 35, "decode 1x32768 K2048": 12, "decode 4x163840 K2048": 25,
             "decode 128x8192 K2048": 10}


def _case_inputs(torch, op, rows, cols, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    logits = torch.randn(rows, cols, device="cuda", generator=g)
    if op == "decode":
        return logits, (torch.full((rows,), cols, dtype=torch.int32, device="cuda"),)
    starts = torch.randint(0, cols // 4, (rows,), device="cuda", generator=g, dtype=torch.int32)
    lengths = (torch.rand(rows, device="cuda", generator=g) * (cols - starts)).int() + 1
    return logits, (starts, starts + lengths)


def bench_top_k(copy_gbs: float, cases=None) -> list[dict]:
    torch = _torch()
    from . import top_k_per_row_decode, top_k_per_row_prefill
    results = []
    for name, op, rows, cols, k in cases or CASES:
        set_bytes = rows * cols * 4
        n = rotation_count(set_bytes)
        sets = [_case_inputs(torch, op, rows, cols, i) for i in range(n)]
        outs = [torch.empty(rows, k, dtype=torch.int32, device="cuda") for _ in range(n)]

        def ours(i):
            logits, ranges = sets[i % n]
            if op == "decode":
                top_k_per_row_decode(logits, 1, ranges[0], outs[i % n], rows, cols, 1, k)
            else:
                top_k_per_row_prefill(logits, ranges[0], ranges[1], outs[i % n], rows, cols, 1, k)

        def baseline(i):
            torch.topk(sets[i % n][0], k, dim=1, sorted=False)

        row = {"op": "top_k_per_row", "case": name, "bytes": set_bytes,
               "us": gpu_time_us(ours, reps=200, sets=n), "graph_us": graph_time_us(ours, max(n, 8)),
               "warm_us": gpu_time_us(lambda i: ours(0), reps=200),
               "torch_topk_us": gpu_time_us(baseline, reps=50, warmup=5, sets=n),
               "vllm_us": VLLM_US.get(name), "target_us": TARGET_US.get(name)}
        row["x_torch"] = row["torch_topk_us"] / row["us"]
        row["gbs"] = set_bytes / row["us"] / 1e3
        row["pct_copy"] = 100 * row["gbs"] / copy_gbs
        results.append(row)
        sets = outs = None  # free the rotation before the next case
        torch.cuda.empty_cache()
    return results


def host_overhead_us() -> float:
    torch = _torch()
    from . import top_k_per_row_decode
    logits = torch.randn(1, 4096, device="cuda")
    sl = torch.full((1,), 4096, dtype=torch.int32, device="cuda")
    idx = torch.empty(1, 2048, dtype=torch.int32, device="cuda")
    return host_time_us(lambda i: top_k_per_row_decode(logits, 1, sl, idx, 1, 4096, 1, 2048))


def print_top_k(rows, copy_gbs, host_us, out=sys.stdout):
    print(f"{device_line(copy_gbs)}; host time per call {host_us:.1f} us", file=out)
    print("us: GPU time per call (median, events; inputs rotated past L2); warm: the same input "
          "every call (L2-resident); graph: per call inside a CUDA graph; x torch: torch.topk time "
          "/ ours; %copy: logits bytes read / time vs the copy ceiling", file=out)
    print(VLLM_NOTE + "; target: the issue's, set on the same H100", file=out)
    print(f"{'case':26s} {'us':>7s} {'warm':>7s} {'graph':>7s} {'topk us':>8s} {'x torch':>7s} {'GB/s':>6s} "
          f"{'%copy':>6s} {'vLLM':>6s} {'target':>6s}", file=out)
    for r in rows:
        print(f"{r['case']:26s} {r['us']:7.1f} {r['warm_us']:7.1f} {r['graph_us']:7.1f} {r['torch_topk_us']:8.1f} "
              f"{r['x_torch']:7.2f} {r['gbs']:6.0f} {r['pct_copy']:6.1f} {r['vllm_us'] or '-':>6} "
              f"{r['target_us'] or '-':>6}", file=out)
