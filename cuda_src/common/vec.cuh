// Vector loads and stores: N elements of T moved as one 2/4/8/16-byte memory access.
//
// Vec<T, N> holds the raw word; elements are read and written through get()/set(), so a
// 16-byte Vec compiles to one LDG.128 / STG.128 (check with cuobjdump -sass). Pointers must be
// aligned to sizeof(T) * N: the Python side picks N from the actual pointer and stride alignment.
#pragma once

namespace cupy_ops {

template <int BYTES> struct RawWord;
template <> struct RawWord<2> { using type = unsigned short; };
template <> struct RawWord<4> { using type = unsigned int; };
template <> struct RawWord<8> { using type = uint2; };
template <> struct RawWord<16> { using type = uint4; };

template <typename T, int N>
struct Vec {
  static constexpr int BYTES = static_cast<int>(sizeof(T)) * N;
  using Raw = typename RawWord<BYTES>::type;
  Raw raw;

  __device__ __forceinline__ T get(int i) const { return reinterpret_cast<const T*>(&raw)[i]; }
  __device__ __forceinline__ void set(int i, T x) { reinterpret_cast<T*>(&raw)[i] = x; }
};

// Plain (cache-all) loads and stores. Evict-first (__ldcs/__stcs) variants measured 5% slower
// on large merges (docs/perf.md), so streaming data uses these too.
template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  Vec<T, N> v;
  v.raw = *reinterpret_cast<const typename Vec<T, N>::Raw*>(p);
  return v;
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<typename Vec<T, N>::Raw*>(p) = v.raw;
}

}  // namespace cupy_ops
