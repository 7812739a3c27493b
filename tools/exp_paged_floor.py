"""Device experiment: how fast can vLLM's paged layout be read at all, and does v1's wave model
pick the best split? (docs/perf.md, paged attention)

1. A read-only kernel that streams exactly the bytes paged attention reads, in its pattern
   (per (sequence, kv head): each cache block's 4 KB K run and 4 KB V run, block ids from a
   random table held in shared memory, 8 x 16 B loads in flight per thread), and the same
   kernel over the same bytes laid out contiguously. Their ratio is what the layout costs.
2. paged_attention_v1 with the split forced to 1..6 pieces per sequence vs the wave model's
   choice, on the shapes where the model matters.

    PYTHONPATH=. python3 tools/exp_paged_floor.py
"""

import cupy
import torch

import cupy_ops
from cupy_ops import _bench
from cupy_ops.ops import paged_attention as pa

READ_SRC = r"""
extern "C" __global__ void __launch_bounds__(256) paged_read(
    const uint4* __restrict__ kc, const uint4* __restrict__ vc, const int* __restrict__ table,
    int blocks_per_seq, long long stride_block, long long stride_head, int contiguous,
    unsigned* out) {
  __shared__ int ids[1024];
  const int seq = blockIdx.x, head = blockIdx.y, heads = gridDim.y;
  for (int i = threadIdx.x; i < blocks_per_seq; i += 256)
    ids[i] = contiguous ? (seq * heads + head) * blocks_per_seq + i : table[seq * blocks_per_seq + i];
  __syncthreads();
  uint4 acc = make_uint4(0, 0, 0, 0);
  for (int b = 0; b < blocks_per_seq; b += 4) {
    uint4 x[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      // contiguous: the run of 256 words sits at id * 256 (heads folded into the id)
      const long long base = contiguous ? static_cast<long long>(ids[b + j]) * 256 + threadIdx.x
                                        : ids[b + j] * stride_block + head * stride_head + threadIdx.x;
      x[2 * j] = kc[base];
      x[2 * j + 1] = vc[base];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) { acc.x ^= x[j].x; acc.y ^= x[j].y; acc.z ^= x[j].z; acc.w ^= x[j].w; }
  }
  if ((acc.x ^ acc.y ^ acc.z ^ acc.w) == 0x12345678u) out[0] = acc.x;
}
"""


def read_floor():
    B, L, Hkv, D, BS = 64, 4096, 8, 128, 16
    nb = B * L // BS
    sets = [_bench._paged_set(torch, B, L, 32, Hkv, D, BS, "bfloat16", "auto", i) for i in range(2)]
    kern = cupy.RawModule(code=READ_SRC).get_function("paged_read")
    sink = cupy.zeros(1, dtype=cupy.uint32)
    words_block = Hkv * D * BS * 2 // 16
    nbytes = 2 * nb * Hkv * D * BS * 2
    for contiguous in (0, 1):
        def run(i):
            q, kc, vc, table, lens = sets[i % 2]
            kern((B, Hkv), (256,), (cupy.asarray(kc).view(cupy.uint8), cupy.asarray(vc).view(cupy.uint8),
                                    cupy.asarray(table), cupy.int32(L // BS),
                                    cupy.int64(words_block), cupy.int64(words_block // Hkv),
                                    cupy.int32(contiguous), sink),
                 stream=cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream))
        us = _bench.gpu_time_us(run, reps=50)
        print(f"read {'contiguous' if contiguous else 'paged (random table)'}: {us:.1f} us, "
              f"{nbytes / us / 1e3:.0f} GB/s", flush=True)


SHAPES = [("B64 L4096 bf16", 64, 4096, "auto"), ("B256 L1024 bf16", 256, 1024, "auto"),
          ("fp8 B64 L4096", 64, 4096, "fp8_e4m3"), ("B8 L4096 bf16", 8, 4096, "auto")]


def forced_splits():
    model = pa.v1_splits
    for name, B, L, kv in SHAPES:
        sets = [_bench._paged_set(torch, B, L, 32, 8, 128, 16, "bfloat16", kv, i)
                for i in range(_bench.rotation_count(2 * B * L * 8 * 128 * (1 if kv != "auto" else 2)))]
        outs = [torch.empty_like(s[0]) for s in sets]
        one = torch.ones((), device="cuda")

        def run(i):
            q, kc, vc, table, lens = sets[i % len(sets)]
            cupy_ops.paged_attention_v1(outs[i % len(sets)], q, kc, vc, 8, 128 ** -0.5, table, lens, 16, L,
                                        kv_cache_dtype=kv, k_scale=one, v_scale=one)
        results = []
        for pieces in (None, 1, 2, 3, 4, 6):
            if pieces is None:
                pa.v1_splits = model
            else:
                per = -(-L // pieces // 64) * 64
                pa.v1_splits = lambda *a, per=per: per  # noqa: E731
            pa._PLANS.clear()
            results.append(f"{'model' if pieces is None else pieces}: {_bench.gpu_time_us(run, reps=60):.1f}")
        pa.v1_splits = model
        pa._PLANS.clear()
        print(f"{name}: " + ", ".join(results), flush=True)
        sets = outs = None  # free before the next shape
        torch.cuda.empty_cache()


if __name__ == "__main__":
    read_floor()
    forced_splits()
