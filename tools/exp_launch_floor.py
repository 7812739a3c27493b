"""Device experiment: what one launch costs in the benchmarks' event time (a GPU sleep, the start
event, the kernel, the end event) for kernels that do nothing, by what they ask of an SM: dynamic
shared memory (does switching the L1 / shared-memory split after the sleep kernel cost?), and a
thread-block cluster. Event time and the per-call time of 20 back-to-back calls in a CUDA graph.

Why: short ops measure 2-3 us more in event time than inside a graph (top-k 128x8192 13.9 vs
11.2 us, 1x32768 14.0 vs 10.8; paged B8 42.5 vs 40.3), and the issue targets are event times.

    PYTHONPATH=. python3 tools/exp_launch_floor.py
"""
import cupy
import torch

from cupy_ops import _bench

SRC = r"""
extern "C" __global__ void empty(int* p) {
  extern __shared__ int s[];
  if (p == (int*)1) *p = s[threadIdx.x];
}
extern "C" __global__ void __cluster_dims__(8, 1, 1) empty_cluster8(int* p) {
  extern __shared__ int s[];
  if (p == (int*)1) *p = s[threadIdx.x];
}
"""


def main():
    print(_bench.device_line(_bench.copy_bandwidth_gbs()))
    module = cupy.RawModule(code=SRC, options=("--std=c++17",))
    sm = torch.cuda.get_device_properties(0).multi_processor_count
    cases = [  # (name, kernel, blocks, threads, dynamic shared memory)
        ("empty, 1 CTA, no smem", "empty", 1, 128, 0),
        ("empty, 132 CTAs x 512, no smem", "empty", sm, 512, 0),
        ("empty, 132 CTAs x 512, 32 KB", "empty", sm, 512, 32 * 1024),
        ("empty, 132 CTAs x 512, 100 KB", "empty", sm, 512, 100 * 1024),
        ("empty, 132 CTAs x 512, 200 KB", "empty", sm, 512, 200 * 1024),
        ("cluster 8, 8 CTAs x 512, 32 KB", "empty_cluster8", 8, 512, 32 * 1024),
        ("cluster 8, 128 CTAs x 512, 100 KB", "empty_cluster8", 128, 512, 100 * 1024),
    ]
    p = cupy.zeros(1, dtype=cupy.int32)
    print(f"{'kernel':40s} {'event us':>9s} {'graph us':>9s}")
    for name, fn_name, blocks, threads, smem in cases:
        fn = module.get_function(fn_name)
        fn.max_dynamic_shared_size_bytes = max(smem, 0)

        def launch(i, fn=fn, blocks=blocks, threads=threads, smem=smem):
            stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
            with stream:
                fn((blocks,), (threads,), (p,), shared_mem=smem)

        event = _bench.gpu_time_us(launch, reps=200)
        graph = _bench.graph_time_us(launch, 20)
        print(f"{name:40s} {event:9.2f} {graph:9.2f}", flush=True)


if __name__ == "__main__":
    main()
