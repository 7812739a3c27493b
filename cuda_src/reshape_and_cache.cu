// reshape_and_cache: scatter new tokens' keys and values into vLLM's paged KV cache.
//
// For each token t < num_tokens with slot = slot_mapping[t], block = slot / block_size,
// offset = slot % block_size, and every kv head h and dim d:
//   key_cache[block, h, d / X, offset, d % X] = convert(key[t, h, d], *k_scale)
//   value_cache[block, h, d, offset]          = convert(value[t, h, d], *v_scale)
// convert: a bit copy when CACHE is T; for fp8 caches fp8(float(x) / scale), rounded to nearest
// even and saturated to the largest finite value (vLLM's convention; NaN stays NaN). The scales
// are read on the device, so a graph replay sees their current values.
// A negative slot is padding and writes nothing (vLLM). Deliberate difference from vLLM: a slot
// >= num_slots (num_blocks * block_size) also writes nothing, so a bad slot never writes outside
// the caches (vLLM writes out of bounds).
//
// Grid: one CTA per token (blockIdx.x). Its threads stride over the num_heads * head_size
// elements, d fastest: key/value reads are coalesced, key_cache writes come in runs of X elements
// (16 bytes), value_cache writes stride block_size elements (the layout's price, as in vLLM).
//
// Template parameters:
//   T      float, __half, __nv_bfloat16: key / value element type
//   CACHE  T (kv_cache_dtype "auto"), __nv_fp8_e4m3 or __nv_fp8_e5m2 (fp8 bytes)
// Derived: X = 16 / sizeof(CACHE), the innermost key_cache dimension.
// Runtime arguments: sizes in elements; strides in elements, 64-bit (block * stride passes 2^31
// on large caches). The last three key_cache dimensions and the last two value_cache dimensions
// are packed (the host checks).
//
// Bytes floor: read num_tokens * (2 * H * D * sizeof(T) + 8), write 2 * num_tokens * H * D *
// sizeof(CACHE) (value writes touch one element per 32-byte sector).
#include "common/dtypes.cuh"

namespace cupy_ops {

template <typename T, typename CACHE>
__device__ __forceinline__ CACHE to_cache(T x, float scale) {
  if constexpr (sizeof(CACHE) == 1) {
    return from_float<CACHE>(to_float(x) / scale);  // IEEE division, as vLLM's x / scale
  } else {
    return x;
  }
}

template <typename T, typename CACHE>
__global__ void reshape_and_cache_kernel(
    CACHE* key_cache, CACHE* value_cache,
    const T* key, const T* value, const long long* slot_mapping,
    const float* k_scale, const float* v_scale,
    int num_heads, int head_size, int block_size, long long num_slots,
    long long key_stride_token, long long key_stride_head,
    long long value_stride_token, long long value_stride_head,
    long long slot_stride,
    long long k_stride_block, long long k_stride_head,
    long long v_stride_block, long long v_stride_head) {
  static_assert(sizeof(CACHE) == 1 || sizeof(CACHE) == sizeof(T),
                "the cache holds the key's own type or fp8 bytes");
  constexpr int X = 16 / static_cast<int>(sizeof(CACHE));

  const long long token_idx = blockIdx.x;
  const long long slot = slot_mapping[token_idx * slot_stride];
  if (slot < 0 || slot >= num_slots) return;
  const long long block_idx = slot / block_size;
  const int block_offset = static_cast<int>(slot - block_idx * block_size);

  float ks = 1.0f, vs = 1.0f;
  if constexpr (sizeof(CACHE) == 1) {
    ks = *k_scale;
    vs = *v_scale;
  }
  const T* key_row = key + token_idx * key_stride_token;
  const T* value_row = value + token_idx * value_stride_token;
  CACHE* k_block = key_cache + block_idx * k_stride_block;
  CACHE* v_block = value_cache + block_idx * v_stride_block;
  const int elems = num_heads * head_size;  // the host keeps this below 2^31
  for (int i = threadIdx.x; i < elems; i += blockDim.x) {
    const int head_idx = i / head_size;
    const int d = i - head_idx * head_size;
    const T k = key_row[head_idx * key_stride_head + d];
    const T v = value_row[head_idx * value_stride_head + d];
    k_block[head_idx * k_stride_head + (d / X) * block_size * X + block_offset * X + d % X] =
        to_cache<T, CACHE>(k, ks);
    v_block[head_idx * v_stride_head + static_cast<long long>(d) * block_size + block_offset] =
        to_cache<T, CACHE>(v, vs);
  }
}

}  // namespace cupy_ops
