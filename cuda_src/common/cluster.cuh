// Thread-block clusters (sm_90): rank, barriers and distributed shared memory, in raw PTX.
//
// Raw PTX rather than cooperative_groups: the NVRTC header set we ship against (the cuda-nvrtc
// and cudart wheels) need not carry cooperative_groups, and these five instructions are all we use.
// Every helper must be reached by all threads of all CTAs of the cluster (".aligned").
//
// Below sm_90 there are no clusters: the helpers compile to a trap and CUPY_OPS_CLUSTER_DIMS to
// nothing, so one source builds for every arch; the dispatchers pick cluster variants only on
// sm_90 and newer.
#pragma once

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define CUPY_OPS_NO_CLUSTERS 1
#define CUPY_OPS_CLUSTER_DIMS(x, y, z)
#else
#define CUPY_OPS_CLUSTER_DIMS(x, y, z) __cluster_dims__(x, y, z)
#endif


namespace cupy_ops {
namespace cluster {

__device__ __forceinline__ unsigned rank() {
  unsigned r;
#ifdef CUPY_OPS_NO_CLUSTERS
  __trap();
  r = 0;
#else
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
#endif
  return r;
}

// arrive has release semantics and wait acquire semantics (PTX defaults): shared-memory writes
// made before arrive, local or remote, are visible to every CTA after its wait.
__device__ __forceinline__ void arrive() {
#ifdef CUPY_OPS_NO_CLUSTERS
  __trap();
#else
  asm volatile("barrier.cluster.arrive.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait() {
#ifdef CUPY_OPS_NO_CLUSTERS
  __trap();
#else
  asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void sync() {
  arrive();
  wait();
}

// The shared::cluster address of `local` (a pointer into this CTA's shared memory) in CTA `r`.
__device__ __forceinline__ unsigned map(const void* local, unsigned r) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(local));
  unsigned out;
#ifdef CUPY_OPS_NO_CLUSTERS
  __trap();
  out = a + 0 * r;
#else
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(out) : "r"(a), "r"(r));
#endif
  return out;
}

__device__ __forceinline__ unsigned load(unsigned cluster_addr) {
  unsigned v;
#ifdef CUPY_OPS_NO_CLUSTERS
  __trap();
  v = cluster_addr;
#else
  asm volatile("ld.shared::cluster.u32 %0, [%1];" : "=r"(v) : "r"(cluster_addr) : "memory");
#endif
  return v;
}

__device__ __forceinline__ void store(unsigned cluster_addr, unsigned v) {
#ifdef CUPY_OPS_NO_CLUSTERS
  __trap();
  (void)cluster_addr;
  (void)v;
#else
  asm volatile("st.shared::cluster.u32 [%0], %1;" ::"r"(cluster_addr), "r"(v) : "memory");
#endif
}

}  // namespace cluster
}  // namespace cupy_ops
