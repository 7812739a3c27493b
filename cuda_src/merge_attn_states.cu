// merge_attn_states: combine two partial attention results by their log-sum-exp (LSE).
//
// For each token t and head h (fp32 math, natural log unless LSE_BASE2):
//   p = prefix_lse[h, t], s = suffix_lse[h, t]; an infinite LSE means "no keys" -> -inf
//   m = max(p, s);  a = e^(p-m) / (e^(p-m) + e^(s-m));  b = e^(s-m) / (...)
//   output[t, h, :] = a * prefix_output[t, h, :] + b * suffix_output[t, h, :]
//   output_lse[h, t] = m + ln(e^(p-m) + e^(s-m))            (only when output_lse != nullptr)
// Special cases (spec merge_attn_states.md §4.1):
//   both sides empty (m == -inf, also NaN paired with -inf as fmaxf drops the NaN):
//     output = bit copy of prefix_output, output_lse = -inf            (vLLM CUDA behaviour)
//   one side's weight is exactly 0 (its LSE is -inf, or exp underflowed):
//     output = bit copy of the other side, output_lse = the other LSE
//     Deliberate difference from vLLM's CUDA kernel, which computes 0 * x + 1 * y: we never read
//     the zero-weight side's data into the result, so NaN/garbage there does not propagate
//     (an empty chunk's output buffer is often uninitialised) and -0.0 survives exactly.
//   any other NaN LSE: NaN output and LSE.
//
// Grid: 1-D; block b handles tokens [b * tokens_per_block, ...) completely. Inside a block the
// work is the flat range of (token, head, vector) triples, vector fastest, so a warp reads
// consecutive 16-byte vectors of one or more head rows (coalesced). Each thread issues UNROLL
// vectors' loads before any math, to keep bytes in flight.
//
// Template parameters:
//   T          float, __half, __nv_bfloat16 (inputs and output share it)
//   VEC_BYTES  2, 4, 8 or 16: bytes per vector access; the host picks the widest that divides
//              head_size * sizeof(T) and every pointer and stride (16 is the fast path)
//   THREADS    threads per block (the host's launch geometry uses the same number)
//   UNROLL     vectors of each input a thread loads before any math (bytes in flight)
//   LSE_BASE2  false: natural-log LSEs (FlashAttention, vLLM); true: base-2 LSEs (FlashInfer)
// Runtime sizes: num_tokens (T), num_heads (H), vecs_per_head = head_size / VEC; strides are in
// elements and 64-bit (token offsets pass 2^31 elements on big batches).
//
// Bytes floor: read 2 * T*H*D*sizeof(T) + 8*T*H (LSEs), write T*H*D*sizeof(T) (+ 4*T*H).
#include "common/dtypes.cuh"
#include "common/math.cuh"
#include "common/vec.cuh"

namespace cupy_ops {

template <typename T, int VEC_BYTES, int THREADS, int UNROLL, bool LSE_BASE2>
__global__ void __launch_bounds__(THREADS) merge_attn_states_kernel(
    T* output, float* output_lse,
    const T* prefix_output, const float* prefix_lse,
    const T* suffix_output, const float* suffix_lse,
    long long num_tokens, int num_heads, int vecs_per_head, int tokens_per_block,
    long long out_stride_token, long long out_stride_head,
    long long prefix_stride_token, long long prefix_stride_head,
    long long suffix_stride_token, long long suffix_stride_head,
    long long out_lse_stride_head, long long out_lse_stride_token,
    long long prefix_lse_stride_head, long long prefix_lse_stride_token,
    long long suffix_lse_stride_head, long long suffix_lse_stride_token) {
  static_assert(VEC_BYTES % sizeof(T) == 0 && VEC_BYTES <= 16,
                "a vector holds a whole number of elements and is at most 16 bytes");
  static_assert(THREADS % 32 == 0, "whole warps");
  static_assert(UNROLL >= 1 && UNROLL <= 8, "vectors per thread per step");
  constexpr int VEC = VEC_BYTES / static_cast<int>(sizeof(T));
  using V = Vec<T, VEC>;

  const long long token_begin = static_cast<long long>(blockIdx.x) * tokens_per_block;
  const long long tokens_left = num_tokens - token_begin;
  const unsigned tokens_here =
      tokens_left < tokens_per_block ? static_cast<unsigned>(tokens_left) : tokens_per_block;
  // The host keeps tokens_per_block * num_heads * vecs_per_head below 2^31.
  const unsigned vecs_per_token = static_cast<unsigned>(num_heads) * vecs_per_head;
  const unsigned work = tokens_here * vecs_per_token;

  for (unsigned base = 0; base < work; base += THREADS * UNROLL) {
    V x[UNROLL], y[UNROLL];
    float p[UNROLL], s[UNROLL];
    long long token[UNROLL];
    int head[UNROLL], vec[UNROLL];

#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const unsigned i = base + u * THREADS + threadIdx.x;
      if (i < work) {
        const unsigned t_local = i / vecs_per_token;
        const unsigned rem = i - t_local * vecs_per_token;
        head[u] = rem / vecs_per_head;
        vec[u] = rem - head[u] * vecs_per_head;
        token[u] = token_begin + t_local;
        const long long col = static_cast<long long>(vec[u]) * VEC;
        x[u] = load_vec<T, VEC>(prefix_output + token[u] * prefix_stride_token +
                                          head[u] * prefix_stride_head + col);
        y[u] = load_vec<T, VEC>(suffix_output + token[u] * suffix_stride_token +
                                          head[u] * suffix_stride_head + col);
        p[u] = __ldg(prefix_lse + head[u] * prefix_lse_stride_head + token[u] * prefix_lse_stride_token);
        s[u] = __ldg(suffix_lse + head[u] * suffix_lse_stride_head + token[u] * suffix_lse_stride_token);
      }
    }

#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const unsigned i = base + u * THREADS + threadIdx.x;
      if (i >= work) continue;
      // FA2 reports +inf and FA3 -inf for an empty key set: both mean "no keys".
      const float pl = isinf(p[u]) ? neg_inf() : p[u];
      const float sl = isinf(s[u]) ? neg_inf() : s[u];
      const float m = fmaxf(pl, sl);
      V r;
      float merged_lse;
      if (m == neg_inf()) {
        r = x[u];
        merged_lse = neg_inf();
      } else {
        const float wp = LSE_BASE2 ? exp2f(pl - m) : expf(pl - m);
        const float ws = LSE_BASE2 ? exp2f(sl - m) : expf(sl - m);
        const float z = wp + ws;
        const float a = wp / z;
        const float b = ws / z;
        merged_lse = m + (LSE_BASE2 ? log2f(z) : logf(z));
        if (a == 0.0f) {
          r = y[u];
        } else if (b == 0.0f) {
          r = x[u];
        } else {
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            r.set(e, from_float<T>(fmaf(a, to_float(x[u].get(e)), b * to_float(y[u].get(e)))));
          }
        }
      }
      const long long col = static_cast<long long>(vec[u]) * VEC;
      store_vec<T, VEC>(output + token[u] * out_stride_token + head[u] * out_stride_head + col, r);
      if (output_lse != nullptr && vec[u] == 0) {
        output_lse[head[u] * out_lse_stride_head + token[u] * out_lse_stride_token] = merged_lse;
      }
    }
  }
}

}  // namespace cupy_ops
