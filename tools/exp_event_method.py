"""Device experiment: does the benchmarks' event method add time of its own to short ops?

`python -m cupy_ops bench` (``_bench.gpu_time_us``) enqueues all reps at once (GPU sleep, start
event, call, end event; 200 times) and reads the events at the end; tools/exp_top_k.py waits for
each rep's end event before enqueuing the next. The same kernel (top-k 128x8192, L2-warm input)
read 13.1 us in the first and 12.0 us in the second (tenth session). This times the same calls
both ways, with queues of 200 and 20 reps and two sleep lengths, and inside a CUDA graph, for an
empty kernel, torch.topk and our top-k, so the difference is attributed to the method or not.

    PYTHONPATH=. python3 tools/exp_event_method.py
"""
import statistics

import cupy
import torch

import cupy_ops
from cupy_ops import _bench


def synced_us(fn, reps=200, sleep=_bench.SLEEP_CYCLES):
    for i in range(20):
        fn(i)
    times = []
    for i in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(sleep)
        s.record()
        fn(i)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e3)
    return statistics.median(times)


def main():
    print(_bench.device_line(_bench.copy_bandwidth_gbs()))
    module = cupy.RawModule(code='extern "C" __global__ void empty(int* p) { if (p == (int*)1) *p = 0; }')
    empty = module.get_function("empty")
    p = cupy.zeros(1, dtype=cupy.int32)

    def launch_empty(i):
        with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):  # (deprecated name, still works)
            empty((132,), (512,), (p,))

    cases = [("empty kernel 132x512", launch_empty)]
    for rows, cols in ((128, 8192), (1, 32768)):
        x = torch.randn(rows, cols, device="cuda")
        sl = torch.full((rows,), cols, dtype=torch.int32, device="cuda")
        idx = torch.empty(rows, 2048, dtype=torch.int32, device="cuda")
        cases.append((f"ours {rows}x{cols} K2048 (warm)",
                      lambda i, x=x, sl=sl, idx=idx, r=rows, c=cols: cupy_ops.top_k_per_row_decode(x, 1, sl, idx, r, c, 1, 2048)))
        cases.append((f"torch.topk {rows}x{cols} (warm)",
                      lambda i, x=x: torch.topk(x, 2048, dim=1, sorted=False)))
    print(f"{'case':34s} {'queued200':>9s} {'queued20':>9s} {'synced':>8s} {'synced/2':>8s} {'graph':>7s}")
    for name, fn in cases:
        q200 = _bench.gpu_time_us(fn, reps=200)
        q20 = _bench.gpu_time_us(fn, reps=20)
        sy = synced_us(fn)
        sy2 = synced_us(fn, sleep=_bench.SLEEP_CYCLES // 2)
        gr = _bench.graph_time_us(fn, 20)
        print(f"{name:34s} {q200:9.2f} {q20:9.2f} {sy:8.2f} {sy2:8.2f} {gr:7.2f}", flush=True)


if __name__ == "__main__":
    main()
