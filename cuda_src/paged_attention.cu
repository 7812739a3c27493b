// paged_attention: decode attention over vLLM's paged KV cache (v1, v2, and v2's reduce).
//
// For sequence s, query head h (kv head g = h / G, G = num_heads / num_kv_heads), L = seq_lens[s]:
//   logit_t = scale * q_h . k_{g,t}  (+ slope_h * (t - L + 1) with ALiBi), t in [0, L)
//   m = max_t logit_t (from -FLT_MAX, NaN ignored),  Z = sum_t exp(logit_t - m)
//   out_h = sum_t exp(logit_t - m) / (Z + 1e-6) * v_{g,t}          (spec paged_attention.md §4)
//
// Grid of paged_decode_kernel: x = sequence, y = (kv head, chunk of GT query heads of its group),
// z = split (a range of split_tokens tokens). One CTA reads each K/V element of its range ONCE
// for all GT query heads of the group (vLLM re-reads K/V once per query head). It streams tiles
// of tile_tokens tokens through shared memory with cp.async, STAGES deep, and keeps an online
// softmax per head. With exp_sums == nullptr the CTA covers the whole sequence and writes out[s,h]
// directly; otherwise it writes the split's partial result in v2's scratch format (§5.2):
//   tmp_out[s,h,z,:] = sum_t e_t / (Z_z + 1e-6) * v_t  (rounded to T), exp_sums = Z_z,
//   max_logits = m_z; splits at or past L write nothing. paged_reduce_kernel merges them (§5.3).
//
// Template parameters:
//   T       query / output element type: float, __half, __nv_bfloat16
//   KV      cache element type: T itself, or __nv_fp8_e4m3 / __nv_fp8_e5m2 (bytes in the cache;
//           k_scale is folded into the query, v_scale into the output)
//   O       element type written to `out`: T (the op's output, v2's tmp_out) or float (v1's
//           split partials in a private workspace, so v1 rounds to T only once)
//   GT      query heads per CTA: 1, 2, 4, 8 or 16 (>= the GQA group when it fits, else chunks)
//   ROWS    head-dim rows per thread in P.V: 1 (head_size <= 128) or 2 (<= 256)
//   STAGES  shared-memory pipeline depth (2..4)
// Runtime sizes: head_size D (multiple of 16 / sizeof(KV), <= 128 * ROWS), block size 2^log2_bs
// (1..256), tile_tokens (power of two >= 16 / sizeof(KV), <= 512), split_tokens (multiple of
// tile_tokens). Strides are in elements and 64-bit.
//
// Bytes floor: sum_s L_s * Hkv * D * 2 * sizeof(KV) (K and V once) + q + out.
// The tensor-core kernels for 16-bit queries are in paged_attention_mma.cu; this file holds the
// CUDA-core kernel (fp32 queries, head sizes 8 (mod 16), block-sparse) and the reduce.
//
// Deliberate differences from vLLM: any head size that is a multiple of 8 (16 for fp8) up to 256
// and any power-of-two block size 1..256; probabilities are not rounded to T before P.V, and fp8
// values are not rounded to T after scaling (both only add error in vLLM); value_cache is
// addressed with its own strides.
#include "common/dtypes.cuh"
#include "common/math.cuh"
#include "common/vec.cuh"
#include "common/paged_tiles.cuh"

namespace cupy_ops {

template <typename T, typename KV, typename O, int GT, int ROWS, int STAGES>
__global__ void __launch_bounds__(PA_THREADS) paged_decode_kernel(PAGED_DECODE_PARAMS) {
  static_assert(GT == 1 || GT == 2 || GT == 4 || GT == 8 || GT == 16, "GT: heads per CTA");
  static_assert(ROWS == 1 || ROWS == 2, "head_size <= 128 * ROWS");
  static_assert(STAGES >= 2 && STAGES <= 4, "pipeline depth");
  constexpr bool IS_FP8 = sizeof(KV) == 1;
  constexpr int X = 16 / static_cast<int>(sizeof(KV));  // cache elements per 16-byte chunk
  constexpr int NWARPS = PA_THREADS / 32;

  const DecodeCta cta(GT, group, seq_lens, max_table_tokens, split_tokens);
  if (exp_sums != nullptr && cta.begin >= cta.seq_len) return;  // v2: nothing to write here
  const int seq = cta.seq, kv_head = cta.kv_head, head0 = cta.head0, heads_here = cta.heads_here;
  const int split = cta.split, seq_len = cta.seq_len, begin = cta.begin, end = cta.end;
  const int block_size = 1 << log2_bs;
  const int tid = threadIdx.x;
  const int warp = tid >> 5, lane = tid & 31;

  // ---- shared memory carve-up (dynamic; sizes from the host's geometry) -------------------
  extern __shared__ __align__(16) unsigned char smem[];
  const int tile_bytes = tile_tokens * head_size * static_cast<int>(sizeof(KV));
  float* q_s = reinterpret_cast<float*>(smem);                      // [GT][D], scaled
  float* p_s = q_s + GT * head_size;                                // [GT][tile]
  float* alpha_s = p_s + GT * tile_tokens;                          // [GT]
  float* l_s = alpha_s + GT;                                        // [GT]
  unsigned char* k_s = reinterpret_cast<unsigned char*>(l_s + GT + 2);  // STAGES x [D/X][tile][X]
  unsigned char* v_s = k_s + STAGES * tile_bytes;                   // STAGES x [D][tile] swizzled
  k_s = reinterpret_cast<unsigned char*>((reinterpret_cast<size_t>(k_s) + 15) & ~size_t(15));
  v_s = k_s + STAGES * tile_bytes;

  const float k_scale = IS_FP8 ? __ldg(k_scale_ptr) : 1.0f;
  const float v_scale = IS_FP8 ? __ldg(v_scale_ptr) : 1.0f;
  const float q_mult = scale * k_scale;
  for (int i = tid; i < GT * head_size; i += PA_THREADS) {
    const int g = i / head_size, d = i - g * head_size;
    q_s[i] = g < heads_here
                 ? to_float(query[seq * q_stride_seq + (head0 + g) * q_stride_head + d]) * q_mult
                 : 0.0f;
  }

  const int* table = block_tables + seq * block_tables_stride;
  const unsigned char* k_base =
      reinterpret_cast<const unsigned char*>(key_cache + kv_head * k_stride_head);
  const unsigned char* v_base =
      reinterpret_cast<const unsigned char*>(value_cache + kv_head * v_stride_head);
  const int row_bytes = tile_tokens * static_cast<int>(sizeof(KV));
  const int chunks = head_size / X;
  const bool sparse = bs_vert_stride > 1;

  // A cache block is loaded if any head of this CTA attends it (always, without block-sparse).
  auto block_needed = [&](int blk) {
    if (!sparse) return true;
    for (int g = 0; g < heads_here; ++g) {
      if (bs_attended(blk, block_size, seq_len, head0 + g, kv_head, num_heads, num_kv_heads,
                      tp_rank, bs_vert_stride, bs_local_blocks, bs_block_size, bs_sliding_step))
        return true;
    }
    return false;
  };

  const KvTiles<KV> tiles{k_s, v_s, k_base, v_base, table, k_stride_block, v_stride_block,
                          log2_bs, head_size, tile_tokens, end};
  auto load_tile = [&](int tile_begin, int stage) { tiles.load(tile_begin, stage, block_needed); };

  float acc[ROWS][GT];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int g = 0; g < GT; ++g) acc[r][g] = 0.0f;
  float m_run[GT], l_run[GT];  // owned by warp (g % NWARPS)
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    m_run[g] = -PA_FLT_MAX;
    l_run[g] = 0.0f;
  }
  float slope[GT];
#pragma unroll
  for (int g = 0; g < GT; ++g)
    slope[g] = (alibi_slopes != nullptr && g < heads_here) ? __ldg(alibi_slopes + head0 + g) : 0.0f;

  const int num_tiles = end > begin ? (end - begin + tile_tokens - 1) / tile_tokens : 0;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < num_tiles) load_tile(begin + s * tile_tokens, s);
    cp_async_commit();
  }

  const int tpt = tile_tokens >= PA_THREADS ? 1 : PA_THREADS / tile_tokens;  // threads per token
  for (int it = 0; it < num_tiles; ++it) {
    const int stage = it % STAGES;
    const int pre = it + STAGES - 1;
    if (pre < num_tiles) load_tile(begin + pre * tile_tokens, pre % STAGES);
    cp_async_commit();
    cp_async_wait<STAGES - 1>();
    __syncthreads();

    const int tile_begin = begin + it * tile_tokens;
    const int valid = min(tile_tokens, end - tile_begin);
    const unsigned char* ks = k_s + stage * tile_bytes;
    unsigned char* vs = v_s + stage * tile_bytes;
    if (valid < tile_tokens) tiles.clear_tail(stage, valid);

    // ---- scores: thread group of tpt threads per token, chunks split among them -------------
    for (int tl = tid / tpt; tl < tile_tokens; tl += PA_THREADS / tpt) {
      float s[GT];
#pragma unroll
      for (int g = 0; g < GT; ++g) s[g] = 0.0f;
      for (int j = tid % tpt; j < chunks; j += tpt) {
        const Vec<KV, X> kv = *reinterpret_cast<const Vec<KV, X>*>(ks + (j * tile_tokens + tl) * 16);
        float kf[X];
#pragma unroll
        for (int e = 0; e < X; ++e) kf[e] = to_float(kv.get(e));
#pragma unroll
        for (int g = 0; g < GT; ++g) {
          const float4* qv = reinterpret_cast<const float4*>(q_s + g * head_size + j * X);
#pragma unroll
          for (int e4 = 0; e4 < X / 4; ++e4) {
            const float4 q4 = qv[e4];
            s[g] = fmaf(q4.x, kf[4 * e4 + 0], s[g]);
            s[g] = fmaf(q4.y, kf[4 * e4 + 1], s[g]);
            s[g] = fmaf(q4.z, kf[4 * e4 + 2], s[g]);
            s[g] = fmaf(q4.w, kf[4 * e4 + 3], s[g]);
          }
        }
      }
      for (int off = 1; off < tpt; off <<= 1) {
#pragma unroll
        for (int g = 0; g < GT; ++g) s[g] += __shfl_xor_sync(0xffffffffu, s[g], off);
      }
      if (tid % tpt == 0) {
        const int t = tile_begin + tl;
        const bool blk_sparse = sparse && t < end;
#pragma unroll
        for (int g = 0; g < GT; ++g) {
          float v = s[g] + slope[g] * static_cast<float>(t - seq_len + 1);
          if (blk_sparse && !bs_attended(t >> log2_bs, block_size, seq_len, head0 + g, kv_head,
                                         num_heads, num_kv_heads, tp_rank, bs_vert_stride,
                                         bs_local_blocks, bs_block_size, bs_sliding_step))
            v = neg_inf();  // skipped: enters the sums as -FLT_MAX, contributes no V
          p_s[g * tile_tokens + tl] = v;
        }
      }
    }
    __syncthreads();

    // ---- online softmax: warp w owns heads w, w + NWARPS, ... ------------------------------
#pragma unroll
    for (int g = 0; g < GT; ++g) {
      if (g % NWARPS != warp) continue;
      float* row = p_s + g * tile_tokens;
      float tmax = -PA_FLT_MAX;
      for (int tl = lane; tl < valid; tl += 32) {
        const float v = row[tl];
        tmax = fmaxf(tmax, v == neg_inf() ? -PA_FLT_MAX : v);
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
      const float m_new = fmaxf(m_run[g], tmax);
      float tsum = 0.0f;
      for (int tl = lane; tl < tile_tokens; tl += 32) {
        float p = 0.0f;
        if (tl < valid) {
          const float v = row[tl];
          const bool skipped = v == neg_inf();
          const float e = __expf((skipped ? -PA_FLT_MAX : v) - m_new);
          tsum += e;
          p = skipped ? 0.0f : e;
        }
        row[tl] = p;
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) tsum += __shfl_xor_sync(0xffffffffu, tsum, off);
      const float alpha = __expf(m_run[g] - m_new);
      l_run[g] = l_run[g] * alpha + tsum;
      m_run[g] = m_new;
      if (lane == 0) alpha_s[g] = alpha;
    }
    __syncthreads();

    // ---- P.V: thread owns head-dim rows tid, tid + 128 ----------------------------------------
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const int d = tid + r * PA_THREADS;
      if (d >= head_size) continue;
#pragma unroll
      for (int g = 0; g < GT; ++g) acc[r][g] *= alpha_s[g];
      const unsigned char* vrow = vs + d * row_bytes;
      for (int c16 = 0; c16 * X < valid; ++c16) {
        const Vec<KV, X> vv = *reinterpret_cast<const Vec<KV, X>*>(vrow + v_swizzle(d, c16 * 16, row_bytes));
        float vf[X];
#pragma unroll
        for (int e = 0; e < X; ++e) vf[e] = to_float(vv.get(e));
#pragma unroll
        for (int g = 0; g < GT; ++g) {
          const float4* pv = reinterpret_cast<const float4*>(p_s + g * tile_tokens + c16 * X);
#pragma unroll
          for (int e4 = 0; e4 < X / 4; ++e4) {
            const float4 p4 = pv[e4];
            acc[r][g] = fmaf(p4.x, vf[4 * e4 + 0], acc[r][g]);
            acc[r][g] = fmaf(p4.y, vf[4 * e4 + 1], acc[r][g]);
            acc[r][g] = fmaf(p4.z, vf[4 * e4 + 2], acc[r][g]);
            acc[r][g] = fmaf(p4.w, vf[4 * e4 + 3], acc[r][g]);
          }
        }
      }
    }
    __syncthreads();  // this stage's buffers are refilled by the next iteration's prefetch
  }
  cp_async_wait<0>();

  // ---- write: the warp owning head g publishes its sums --------------------------------------
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    if (g % NWARPS == warp && lane == 0) {
      l_s[g] = l_run[g];
      if (exp_sums != nullptr && g < heads_here) {
        const long long idx = (static_cast<long long>(seq) * num_heads + head0 + g) * num_partitions + split;
        exp_sums[idx] = l_run[g];
        max_logits[idx] = m_run[g];
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int d = tid + r * PA_THREADS;
    if (d >= head_size) continue;
#pragma unroll
    for (int g = 0; g < GT; ++g) {
      if (g >= heads_here) continue;
      const float inv = v_scale / (l_s[g] + 1e-6f);
      out[seq * out_stride_seq + (head0 + g) * out_stride_head + split * out_stride_part + d] =
          from_float<O>(acc[r][g] * inv);
    }
  }
}

// v2's reduce (§5.3): out[s,h,:] from the splits' (tmp_out, exp_sums, max_logits); tmp_out holds
// O (T for v2, float for v1's workspace). Grid (num_seqs, num_heads), PA_THREADS threads; shared
// memory (num_partitions + 32) floats.
template <typename T, typename O>
__global__ void __launch_bounds__(PA_THREADS) paged_reduce_kernel(
    T* out, const float* exp_sums, const float* max_logits, const O* tmp_out, const int* seq_lens,
    int num_heads, int head_size, int split_tokens, int num_partitions,
    long long out_stride_seq, long long out_stride_head) {
  const int seq = blockIdx.x, head = blockIdx.y;
  const int seq_len = seq_lens[seq];
  const int n = (seq_len + split_tokens - 1) / split_tokens;
  T* o = out + seq * out_stride_seq + head * out_stride_head;
  const long long base = (static_cast<long long>(seq) * num_heads + head) * num_partitions;
  const O* tmp = tmp_out + base * head_size;
  if (n <= 1) {  // no tokens: zeros; one split: its result verbatim (v1 == v2 bitwise there)
    for (int d = threadIdx.x; d < head_size; d += PA_THREADS)
      o[d] = from_float<T>(n == 0 ? 0.0f : to_float(tmp[d]));
    return;
  }
  extern __shared__ float red_s[];  // [n] weights, then [32] scratch
  float* w_s = red_s;
  float* scratch = red_s + num_partitions;
  float mx = -PA_FLT_MAX;
  for (int p = threadIdx.x; p < n; p += PA_THREADS) mx = fmaxf(mx, max_logits[base + p]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = mx;
  __syncthreads();
  mx = scratch[0];
  for (int w = 1; w < PA_THREADS / 32; ++w) mx = fmaxf(mx, scratch[w]);
  float sum = 0.0f;
  for (int p = threadIdx.x; p < n; p += PA_THREADS) {
    const float w = exp_sums[base + p] * expf(max_logits[base + p] - mx);
    w_s[p] = w;
    sum += w;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = sum;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < PA_THREADS / 32; ++w) total += scratch[w];
  const float inv = 1.0f / (total + 1e-6f);
  for (int d = threadIdx.x; d < head_size; d += PA_THREADS) {
    float a = 0.0f;
    for (int p = 0; p < n; ++p) a += to_float(tmp[p * head_size + d]) * w_s[p] * inv;
    o[d] = from_float<T>(a);
  }
}

}  // namespace cupy_ops
