"""Device experiment: which copy mechanism reads vLLM's paged layout fastest on this card?

Three read-only kernels stream exactly the K/V bytes of paged decode at B64 L4096 (bf16, Hkv 8,
D 128, block 16: 4 KB K run and 4 KB V run per cache block and kv head, random block table),
one CTA per (sequence, kv head), and consume every byte from shared memory (xor):
  ldg      8 x 16-byte loads in flight per thread, no shared memory (tools/exp_paged_floor.py)
  cp.async 64-token stages (32 KB), STAGES deep, one __syncthreads per stage: the pipeline of
           paged_decode_mma8_kernel without the math
  bulk     the same stages filled by cp.async.bulk (the Hopper copy engine, 4 KB per
           instruction) issued by one producer warp, full/empty mbarriers per stage, so
           consumer warps never wait for each other
Bytes / time against the copy ceiling tells whether the loader or the math limits the kernel.

    PYTHONPATH=. python3 tools/exp_paged_tma.py
"""

import cupy
import torch

from cupy_ops import _bench

SRC = r"""
__device__ __forceinline__ unsigned sa(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

extern "C" __global__ void __launch_bounds__(256) read_cpasync(
    const unsigned char* kc, const unsigned char* vc, const int* table, int blocks_per_seq,
    long long stride_block, long long stride_head, unsigned* out, int stages) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int seq = blockIdx.x, head = blockIdx.y, tid = threadIdx.x;
  const int tiles = blocks_per_seq / 4;
  const int u = tid >> 6, f = tid & 63;   // block of the tile, word within (64 threads x 4 words)
  uint4 acc = make_uint4(0, 0, 0, 0);
  auto load = [&](int it) {
    if (it >= tiles) return;
    const long long blk = table[seq * blocks_per_seq + it * 4 + u];
    const unsigned char* ks = kc + blk * stride_block + head * stride_head;
    const unsigned char* vs = vc + blk * stride_block + head * stride_head;
    unsigned char* dst = smem + (it % stages) * 32768 + u * 4096;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int off = (f + w * 64) * 16;
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(sa(dst + off)), "l"(ks + off));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(sa(dst + 16384 + off)), "l"(vs + off));
    }
  };
  for (int s = 0; s < stages - 1; ++s) { load(s); asm volatile("cp.async.commit_group;\n"); }
  for (int it = 0; it < tiles; ++it) {
    if (stages == 3) asm volatile("cp.async.wait_group 1;\n"); else asm volatile("cp.async.wait_group 2;\n");
    __syncthreads();
    load(it + stages - 1);
    asm volatile("cp.async.commit_group;\n");
    const uint4* src = reinterpret_cast<const uint4*>(smem + (it % stages) * 32768);
#pragma unroll
    for (int j = 0; j < 8; ++j) { uint4 x = src[tid + j * 256]; acc.x ^= x.x; acc.y ^= x.y; acc.z ^= x.z; acc.w ^= x.w; }
  }
  if ((acc.x ^ acc.y ^ acc.z ^ acc.w) == 0x12345678u) out[0] = acc.x;
}

__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
  asm volatile(
      "{\n .reg .pred p;\n WAIT_%=:\n"
      " mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      " @!p bra WAIT_%=;\n}\n" :: "r"(bar), "r"(parity));
}

// 8 consumer warps + 1 producer warp.
extern "C" __global__ void __launch_bounds__(288) read_bulk(
    const unsigned char* kc, const unsigned char* vc, const int* table, int blocks_per_seq,
    long long stride_block, long long stride_head, unsigned* out, int stages) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) unsigned long long full[4], empty[4];
  const int seq = blockIdx.x, head = blockIdx.y, tid = threadIdx.x, warp = tid >> 5;
  const int tiles = blocks_per_seq / 4;
  if (tid == 0) {
    for (int s = 0; s < stages; ++s) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" :: "r"(sa(&full[s])));
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 8;\n" :: "r"(sa(&empty[s])));
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n");
  }
  __syncthreads();
  if (warp == 8) {
    if ((tid & 31) == 0) {
      for (int it = 0; it < tiles; ++it) {
        const int s = it % stages;
        if (it >= stages) mbar_wait(sa(&empty[s]), ((it / stages) - 1) & 1);
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(sa(&full[s])), "r"(32768));
        unsigned char* dst = smem + s * 32768;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const long long blk = table[seq * blocks_per_seq + it * 4 + u];
          const unsigned char* ks = kc + blk * stride_block + head * stride_head;
          const unsigned char* vs = vc + blk * stride_block + head * stride_head;
          asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], 4096, [%2];\n"
                       :: "r"(sa(dst + u * 4096)), "l"(ks), "r"(sa(&full[s])) : "memory");
          asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], 4096, [%2];\n"
                       :: "r"(sa(dst + 16384 + u * 4096)), "l"(vs), "r"(sa(&full[s])) : "memory");
        }
      }
    }
    return;
  }
  uint4 acc = make_uint4(0, 0, 0, 0);
  for (int it = 0; it < tiles; ++it) {
    const int s = it % stages;
    mbar_wait(sa(&full[s]), (it / stages) & 1);
    const uint4* src = reinterpret_cast<const uint4*>(smem + s * 32768);
#pragma unroll
    for (int j = 0; j < 8; ++j) { uint4 x = src[tid + j * 256]; acc.x ^= x.x; acc.y ^= x.y; acc.z ^= x.z; acc.w ^= x.w; }
    __syncwarp();
    if ((tid & 31) == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" :: "r"(sa(&empty[s])) : "memory");
  }
  if ((acc.x ^ acc.y ^ acc.z ^ acc.w) == 0x12345678u) out[0] = acc.x;
}

extern "C" __global__ void __launch_bounds__(256) read_ldg(
    const uint4* __restrict__ kc, const uint4* __restrict__ vc, const int* __restrict__ table,
    int blocks_per_seq, long long stride_block, long long stride_head, unsigned* out, int unused) {
  const int seq = blockIdx.x, head = blockIdx.y;
  uint4 acc = make_uint4(0, 0, 0, 0);
  for (int b = 0; b < blocks_per_seq; b += 4) {
    uint4 x[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const long long base = (table[seq * blocks_per_seq + b + j] * stride_block + head * stride_head) / 16 + threadIdx.x;
      x[2 * j] = kc[base];
      x[2 * j + 1] = vc[base];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) { acc.x ^= x[j].x; acc.y ^= x[j].y; acc.z ^= x[j].z; acc.w ^= x[j].w; }
  }
  if ((acc.x ^ acc.y ^ acc.z ^ acc.w) == 0x12345678u) out[0] = acc.x;
}
"""


def main():
    B, L, Hkv, D, BS = 64, 4096, 8, 128, 16
    nb = B * L // BS
    sets = [_bench._paged_set(torch, B, L, 32, Hkv, D, BS, "bfloat16", "auto", i) for i in range(2)]
    mod = cupy.RawModule(code=SRC, options=("-arch=sm_90", "--std=c++17"))
    sink = cupy.zeros(1, dtype=cupy.uint32)
    block_bytes = Hkv * D * BS * 2
    nbytes = 2 * nb * Hkv * D * BS * 2
    print(f"device: {torch.cuda.get_device_name()}  bytes {nbytes / 1e6:.0f} MB  "
          f"copy ceiling {_bench.copy_bandwidth_gbs():.0f} GB/s", flush=True)
    for name, threads, stages in (("ldg", 256, 0), ("cpasync", 256, 3), ("cpasync", 256, 4),
                                  ("bulk", 288, 3), ("bulk", 288, 4), ("bulk", 288, 2)):
        fn = mod.get_function("read_" + name)
        smem = stages * 32768
        if smem > 48 * 1024:
            fn.max_dynamic_shared_size_bytes = smem

        def run(i):
            q, kc, vc, table, lens = sets[i % 2]
            fn((B, Hkv), (threads,), (cupy.asarray(kc).view(cupy.uint8), cupy.asarray(vc).view(cupy.uint8),
                                      cupy.asarray(table), cupy.int32(L // BS), cupy.int64(block_bytes),
                                      cupy.int64(block_bytes // Hkv), sink, cupy.int32(stages)),
               shared_mem=smem, stream=cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream))
        us = _bench.gpu_time_us(run, reps=50)
        print(f"{name:8s} stages {stages}: {us:7.1f} us  {nbytes / us / 1e3:6.0f} GB/s", flush=True)


if __name__ == "__main__":
    main()
