// cp.async (sm_80+): global -> shared copies that bypass registers, many in flight per thread.
#pragma once

namespace cupy_ops {

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
template <int BYTES>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem) {
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
                 "n"(BYTES));
  }
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }


// Whether this compilation targets the sm_90 copy engine (bulk copies, mbarrier transaction
// counts); on older targets the helpers below compile to nothing and callers must not use them.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define CUPY_OPS_HAS_BULK_COPY 1
#else
#define CUPY_OPS_HAS_BULK_COPY 0
#endif

// Bulk copies (sm_90 copy engine): one thread moves a contiguous global range of `bytes` (a
// multiple of 16, both addresses 16-byte aligned) into shared memory and the transfer counts its
// bytes down on an mbarrier. A stage is ready when its mbarrier's phase completes: one arrival
// that announced the stage's total bytes (mbar_arrive_expect_tx), and all of those bytes landed.
__device__ __forceinline__ void mbar_init(unsigned bar, int arrivals) {
#if CUPY_OPS_HAS_BULK_COPY
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals));
#endif
}
// Makes initialised mbarriers visible to the copy engine; a __syncthreads must follow.
__device__ __forceinline__ void mbar_init_fence() {
#if CUPY_OPS_HAS_BULK_COPY
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::);
#endif
}
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned bar, int bytes) {
#if CUPY_OPS_HAS_BULK_COPY
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
// Orders this thread's earlier generic-proxy shared-memory writes before later bulk copies (async
// proxy) into the same bytes.
__device__ __forceinline__ void fence_proxy_async_smem() {
#if CUPY_OPS_HAS_BULK_COPY
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_wait_parity(unsigned bar, unsigned parity) {
#if CUPY_OPS_HAS_BULK_COPY
  asm volatile(
      "{\n .reg .pred done;\n WAIT_%=:\n"
      " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra WAIT_%=;\n}\n" ::"r"(bar), "r"(parity) : "memory");
#endif
}
__device__ __forceinline__ void bulk_copy_g2s(unsigned smem, const void* gmem, int bytes, unsigned bar) {
#if CUPY_OPS_HAS_BULK_COPY
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
               ::"r"(smem), "l"(gmem), "r"(bytes), "r"(bar) : "memory");
#endif
}

}  // namespace cupy_ops
