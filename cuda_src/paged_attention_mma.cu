// paged_attention (tensor cores): decode attention over vLLM's paged KV cache for 16-bit queries.
//
// Same math, grid, arguments and outputs as paged_decode_kernel in paged_attention.cu (read its
// header for the formula, the grid mapping and the v2 scratch contract), plus part_tokens. Two
// ways to share a 64-token tile among the CTA's 4 warps:
//   paged_decode_mma_kernel        each warp owns 16 tokens of every tile with its own online
//                                  softmax; the warps' (m, l, O) merge once at the end (v1).
//   paged_decode_mma_parts_kernel  warps exchange S through shared memory, run the same softmax
//                                  over all 64 tokens and own a quarter of the head dimension, so
//                                  a CTA can emit a result every part_tokens tokens (v2's 512-token
//                                  partitions) without merging warps: CTAs span several partitions.
// Measured on H100 (docs/perf.md): the first is faster for v1 (fewer exponentials and barriers),
// the second for v2 (fewer CTAs than one per partition).
#include "common/dtypes.cuh"
#include "common/math.cuh"
#include "common/vec.cuh"
#include "common/paged_tiles.cuh"
#include "common/mma.cuh"
#include "common/paged_mma.cuh"

namespace cupy_ops {

// The v1 kernels' hand-over to finish_cta: token group g (16 tokens of every tile, one online
// softmax) publishes its (m, l) for the CTA's 16 query rows (the lanes given owns_ml; l summed
// over the quad first) and its O n-tiles [n0, n0 + NT) (8 columns each), to m_s [4][16],
// l_s [4][16] and o_s [4][16][head_size].
template <int NT>
__device__ __forceinline__ void publish_group_state(float* m_s, float* l_s, float* o_s, int g, bool owns_ml, int n0,
                                                    const float (&m_run)[2], float (&l_run)[2],
                                                    const float (&o)[NT][4], int head_size, int gq, int tq) {
#pragma unroll
  for (int row = 0; row < 2; ++row) {
    l_run[row] += __shfl_xor_sync(0xffffffffu, l_run[row], 1);
    l_run[row] += __shfl_xor_sync(0xffffffffu, l_run[row], 2);
  }
  if (owns_ml) {
    m_s[g * 16 + gq] = m_run[0];
    m_s[g * 16 + gq + 8] = m_run[1];
    l_s[g * 16 + gq] = l_run[0];
    l_s[g * 16 + gq + 8] = l_run[1];
  }
  float* base = o_s + (g * 16) * head_size;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int n = n0 + j;
    if (n * 8 >= head_size) break;
    const int d = n * 8 + tq * 2;
    base[gq * head_size + d] = o[j][0];
    base[gq * head_size + d + 1] = o[j][1];
    base[(gq + 8) * head_size + d] = o[j][2];
    base[(gq + 8) * head_size + d + 1] = o[j][3];
  }
}

// Tensor-core variant of paged_decode_kernel for 16-bit queries (same grid, arguments and
// outputs, plus part_tokens, which must equal split_tokens here; no block-sparse). Used by v1. The CTA's 16 query-head rows (the GQA group, zero-padded) are the M
// dimension of mma.sync m16n8k16: S = Q K^T per 8 tokens, then O += P V with P taken straight
// from S's registers. Each of the 4 warps owns 16 tokens of every 64-token tile with its own
// online softmax; the warps' (m, l, O) are merged through shared memory at the end.
//   DMAX    head_size bound (64, 128, 256): sizes the register arrays; head_size % 16 == 0
//   STAGES  cp.async pipeline depth (2..4)
// fp8 caches decode to fp16 in registers and use fp16 mma (e4m3 and e5m2 values are exact in fp16).
template <typename T, typename KV, typename O, int DMAX, int STAGES>
__global__ void __launch_bounds__(PA_THREADS) paged_decode_mma_kernel(PAGED_DECODE_MMA_PARAMS) {
  static_assert(DMAX == 64 || DMAX == 128 || DMAX == 256, "head_size bound");
  constexpr bool IS_FP8 = sizeof(KV) == 1;
  using MT = typename pick_type<IS_FP8, __half, T>::type;
  constexpr int ELEM = static_cast<int>(sizeof(KV));
  constexpr int KSTEPS = DMAX / 16;
  constexpr int NTILES = DMAX / 8;
  constexpr int TILE = 64;  // tile_tokens must equal this (the host passes it)
  static_assert(STAGES >= 2 && STAGES <= 4, "pipeline depth");

  const DecodeCta cta(16, group, seq_lens, max_table_tokens, split_tokens);
  if (exp_sums != nullptr && cta.begin >= cta.seq_len) {
    if (final_out != nullptr && cta.seq_len == 0 && cta.split == 0)
      zero_empty_sequence<T, PA_THREADS>(final_out, final_stride_seq, final_stride_head, cta.seq, cta.head0,
                                  cta.heads_here, head_size);
    return;
  }
  const int seq = cta.seq, kv_head = cta.kv_head, head0 = cta.head0, heads_here = cta.heads_here;
  const int split = cta.split, seq_len = cta.seq_len, begin = cta.begin, end = cta.end;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gq = lane >> 2, tq = lane & 3;  // mma fragment coordinates

  extern __shared__ __align__(16) unsigned char smem[];
  const int tile_bytes = TILE * head_size * ELEM;
  unsigned char* k_s = smem;
  unsigned char* v_s = smem + STAGES * tile_bytes;
  const KvTiles<KV> tiles{k_s, v_s,
                          reinterpret_cast<const unsigned char*>(key_cache + kv_head * k_stride_head),
                          reinterpret_cast<const unsigned char*>(value_cache + kv_head * v_stride_head),
                          block_tables + seq * block_tables_stride, k_stride_block, v_stride_block,
                          log2_bs, head_size, TILE, end};
  auto all_blocks = [](int) { return true; };
  const TileCopier<KV> copier(tiles);

  const MmaRows<T, KV, MT, KSTEPS> rows(cta, query, q_stride_seq, q_stride_head, alibi_slopes, k_scale_ptr,
                                        v_scale_ptr, scale, head_size, gq, tq);
  const auto& qa = rows.qa;
  const float* slope = rows.slope;
  // The online softmax runs in base 2 (logits times log2 e, exp2_ftz); max logits are written
  // back in natural units.
  const float s_scale = rows.s_scale * LOG2E, v_scale = rows.v_scale;
  const float slope2[2] = {slope[0] * LOG2E, slope[1] * LOG2E};

  float o[NTILES][4];
#pragma unroll
  for (int n = 0; n < NTILES; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_run[2] = {-PA_FLT_MAX, -PA_FLT_MAX}, l_run[2] = {0.0f, 0.0f};

  const int num_tiles = end > begin ? (end - begin + TILE - 1) / TILE : 0;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < num_tiles) copier.load(begin + s * TILE, s, all_blocks);
    cp_async_commit();
  }
  const int rb = TILE * ELEM;  // V row bytes
  // One barrier per tile: after it, tile `it` has landed for everyone and every warp is done
  // with tile it - 1, whose buffer the prefetch of tile it + STAGES - 1 then overwrites.
  for (int it = 0; it < num_tiles; ++it) {
    const int stage = it % STAGES;
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    if (it + STAGES - 1 < num_tiles) copier.load(begin + (it + STAGES - 1) * TILE, (it + STAGES - 1) % STAGES, all_blocks);
    cp_async_commit();
    const int tile_begin = begin + it * TILE;
    const int valid = min(TILE, end - tile_begin);
    if (valid < TILE) tiles.clear_tail(stage, valid);
    const unsigned char* ks = k_s + stage * tile_bytes;
    const unsigned char* vs = v_s + stage * tile_bytes;
    const int tw = warp * 16;  // this warp's first token in the tile
    if (tw < valid) {
      float s[2][4];
      qk_16_tokens<KV, MT, KSTEPS, TILE>(s, qa, ks, tw, head_size, gq, tq);
      // Scale, ALiBi, mask; then the online softmax per head row (rows gq and gq + 8).
      float mx[2] = {-PA_FLT_MAX, -PA_FLT_MAX};
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int t = tw + nt * 8 + tq * 2 + (i & 1);
          const int row = i >> 1;
          float v = s[nt][i] * s_scale;
          if (alibi_slopes != nullptr) v += slope2[row] * static_cast<float>(tile_begin + t - seq_len + 1);
          if (t >= valid) v = neg_inf();
          s[nt][i] = v;
          mx[row] = fmaxf(mx[row], v);
        }
#pragma unroll
      for (int row = 0; row < 2; ++row) {
        mx[row] = fmaxf(mx[row], __shfl_xor_sync(0xffffffffu, mx[row], 1));
        mx[row] = fmaxf(mx[row], __shfl_xor_sync(0xffffffffu, mx[row], 2));
        const float m_new = fmaxf(m_run[row], mx[row]);
        if (m_new != m_run[row]) {  // the running max rarely moves after the first tiles
          const float alpha = exp2_ftz(m_run[row] - m_new);
          m_run[row] = m_new;
          l_run[row] *= alpha;
#pragma unroll
          for (int n = 0; n < NTILES; ++n) {
            o[n][row * 2] *= alpha;
            o[n][row * 2 + 1] *= alpha;
          }
        }
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float p = exp2_ftz(s[nt][i] - m_run[i >> 1]);
          s[nt][i] = p;
          l_run[i >> 1] += p;
        }
      const unsigned pa[4] = {pack2<MT>(s[0][0], s[0][1]), pack2<MT>(s[0][2], s[0][3]),
                              pack2<MT>(s[1][0], s[1][1]), pack2<MT>(s[1][2], s[1][3])};
      // Rows d = 8n + gq share d's low 3 bits with gq, so the swizzled offsets of this lane's
      // two token pairs are the same in every n-tile: computed once, then a row stride per n.
      const int tb = (tw + tq * 2) * ELEM;  // byte of token tw + 2c in a V row (and + 8 tokens)
      const int tb8 = tb + 8 * ELEM;
      const unsigned char* v0 = vs + gq * rb + v_swizzle(gq, tb & ~15, rb) + (tb & 15);
      const unsigned char* v1 = vs + gq * rb + v_swizzle(gq, tb8 & ~15, rb) + (tb8 & 15);
#pragma unroll
      for (int n = 0; n < NTILES; ++n) {
        if (n * 8 >= head_size) break;
        const unsigned b0 = load_pair<KV, MT>(v0 + n * 8 * rb);
        const unsigned b1 = load_pair<KV, MT>(v1 + n * 8 * rb);
        mma16816<MT>(o[n], pa, b0, b1);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // Merge the 4 warps: each publishes (m, l, O) for its 16 rows; shared memory is free now.
  float* m_s = reinterpret_cast<float*>(smem);       // [4][16]
  float* l_s = m_s + 4 * 16;                           // [4][16]
  float* o_s = l_s + 4 * 16;                           // [4][16][head_size]
  publish_group_state(m_s, l_s, o_s, warp, tq == 0, 0, m_run, l_run, o, head_size, gq, tq);
  __syncthreads();
  finish_cta<T, O, PA_THREADS, 4>(m_s, l_s, o_s, v_scale, out, seq, head0, heads_here, head_size, split,
                                  out_stride_seq, out_stride_head, out_stride_part, exp_sums, max_logits,
                                  num_heads, num_partitions, final_out, final_stride_seq, final_stride_head,
                                  split_counters, seq_len, split_tokens, part_tokens, smem);
}

// 8-warp variant of paged_decode_mma_kernel (same arguments, grid and outputs; blockDim 256).
// Warp w owns tokens [16 (w % 4), +16) of every 64-token tile and half of the head dimension
// (w / 4): QK^T over its half gives a partial S that the warp pair (w, w ^ 4) exchanges through
// shared memory (one more CTA barrier per tile), both run the same online softmax, and
// each computes O += P V for its half. Twice the warps per SM of the 4-warp kernel at half the
// registers per thread, for the same shared memory plus 8 KB: more loads and mma chains in
// flight to hide latency (docs/perf.md, p7).
template <typename T, typename KV, typename O, int DMAX, int STAGES>
__global__ void __launch_bounds__(PA_THREADS8, DMAX == 256 ? 1 : 2) paged_decode_mma8_kernel(PAGED_DECODE_MMA_PARAMS) {
  static_assert(DMAX == 64 || DMAX == 128 || DMAX == 256, "head_size bound");
  constexpr bool IS_FP8 = sizeof(KV) == 1;
  using MT = typename pick_type<IS_FP8, __half, T>::type;
  constexpr int ELEM = static_cast<int>(sizeof(KV));
  constexpr int KH = DMAX / 32;   // k-steps (16 dims) per head half
  constexpr int NH = DMAX / 16;   // output n-tiles (8 dims) per head half
  constexpr int TILE = 64;        // tile_tokens must equal this (the host passes it)
  static_assert(STAGES >= 2 && STAGES <= 4, "pipeline depth");

  const DecodeCta cta(16, group, seq_lens, max_table_tokens, split_tokens);
  if (exp_sums != nullptr && cta.begin >= cta.seq_len) {
    if (final_out != nullptr && cta.seq_len == 0 && cta.split == 0)
      zero_empty_sequence<T, PA_THREADS8>(final_out, final_stride_seq, final_stride_head, cta.seq, cta.head0,
                                  cta.heads_here, head_size);
    return;
  }
  const int seq = cta.seq, kv_head = cta.kv_head, head0 = cta.head0, heads_here = cta.heads_here;
  const int split = cta.split, seq_len = cta.seq_len, begin = cta.begin, end = cta.end;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tg = warp & 3, half = warp >> 2;  // token group, head half
  const int gq = lane >> 2, tq = lane & 3;    // mma fragment coordinates

  extern __shared__ __align__(16) unsigned char smem[];
  const int tile_bytes = TILE * head_size * ELEM;
  float* x_s = reinterpret_cast<float*>(smem);               // [8 warps][32 lanes][8] partial S
  unsigned char* k_s = smem + 8 * 32 * 8 * 4;
  unsigned char* v_s = k_s + STAGES * tile_bytes;
  const KvTiles<KV> tiles{k_s, v_s,
                          reinterpret_cast<const unsigned char*>(key_cache + kv_head * k_stride_head),
                          reinterpret_cast<const unsigned char*>(value_cache + kv_head * v_stride_head),
                          block_tables + seq * block_tables_stride, k_stride_block, v_stride_block,
                          log2_bs, head_size, TILE, end};
  auto all_blocks = [](int) { return true; };
  const TileCopier<KV> copier(tiles);

  const MmaRows<T, KV, MT, KH> rows(cta, query, q_stride_seq, q_stride_head, alibi_slopes, k_scale_ptr,
                                    v_scale_ptr, scale, head_size, gq, tq, half * KH * 16);
  const auto& qa = rows.qa;
  const float* slope = rows.slope;
  // The online softmax runs in base 2 (logits times log2 e, exp2_ftz); max logits are written
  // back in natural units.
  const float s_scale = rows.s_scale * LOG2E, v_scale = rows.v_scale;
  const float slope2[2] = {slope[0] * LOG2E, slope[1] * LOG2E};

  float o[NH][4];
#pragma unroll
  for (int n = 0; n < NH; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_run[2] = {-PA_FLT_MAX, -PA_FLT_MAX}, l_run[2] = {0.0f, 0.0f};

  const int num_tiles = end > begin ? (end - begin + TILE - 1) / TILE : 0;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < num_tiles) copier.load(begin + s * TILE, s, all_blocks);
    cp_async_commit();
  }
  const int rb = TILE * ELEM;  // V row bytes
  float* mine = x_s + (warp * 32 + lane) * 8;
  const float* other = x_s + ((warp ^ 4) * 32 + lane) * 8;
  for (int it = 0; it < num_tiles; ++it) {
    const int stage = it % STAGES;
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    if (it + STAGES - 1 < num_tiles) copier.load(begin + (it + STAGES - 1) * TILE, (it + STAGES - 1) % STAGES, all_blocks);
    cp_async_commit();
    const int tile_begin = begin + it * TILE;
    const int valid = min(TILE, end - tile_begin);
    if (valid < TILE) tiles.clear_tail(stage, valid);
    const unsigned char* ks = k_s + stage * tile_bytes;
    const unsigned char* vs = v_s + stage * tile_bytes;
    const int tw = tg * 16;  // this warp's first token in the tile
    float s[2][4];
    if (tw < valid) qk_16_tokens<KV, MT, KH, TILE>(s, qa, ks, tw, head_size, gq, tq, half * KH);
    // Exchange partial S with the other half's warp (same tokens); a + b == b + a exactly, so
    // both warps hold the same S and run the same softmax. A CTA-wide barrier: with a 64-thread
    // named barrier per pair compute-sanitizer racecheck reported hazards here that we could
    // not rule out, and the two measured the same.
    if (tw < valid) {
#pragma unroll
      for (int i = 0; i < 8; ++i) mine[i] = s[i >> 2][i & 3];
    }
    __syncthreads();
    if (tw < valid) {
#pragma unroll
      for (int i = 0; i < 8; ++i) s[i >> 2][i & 3] += other[i];
      float mx[2] = {-PA_FLT_MAX, -PA_FLT_MAX};
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int t = tw + nt * 8 + tq * 2 + (i & 1);
          const int row = i >> 1;
          float v = s[nt][i] * s_scale;
          if (alibi_slopes != nullptr) v += slope2[row] * static_cast<float>(tile_begin + t - seq_len + 1);
          if (t >= valid) v = neg_inf();
          s[nt][i] = v;
          mx[row] = fmaxf(mx[row], v);
        }
#pragma unroll
      for (int row = 0; row < 2; ++row) {
        mx[row] = fmaxf(mx[row], __shfl_xor_sync(0xffffffffu, mx[row], 1));
        mx[row] = fmaxf(mx[row], __shfl_xor_sync(0xffffffffu, mx[row], 2));
        const float m_new = fmaxf(m_run[row], mx[row]);
        if (m_new != m_run[row]) {
          const float alpha = exp2_ftz(m_run[row] - m_new);
          m_run[row] = m_new;
          l_run[row] *= alpha;
#pragma unroll
          for (int n = 0; n < NH; ++n) {
            o[n][row * 2] *= alpha;
            o[n][row * 2 + 1] *= alpha;
          }
        }
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float p = exp2_ftz(s[nt][i] - m_run[i >> 1]);
          s[nt][i] = p;
          l_run[i >> 1] += p;
        }
      const unsigned pa[4] = {pack2<MT>(s[0][0], s[0][1]), pack2<MT>(s[0][2], s[0][3]),
                              pack2<MT>(s[1][0], s[1][1]), pack2<MT>(s[1][2], s[1][3])};
      const int tb = (tw + tq * 2) * ELEM;
      const int tb8 = tb + 8 * ELEM;
      const unsigned char* v0 = vs + gq * rb + v_swizzle(gq, tb & ~15, rb) + (tb & 15);
      const unsigned char* v1 = vs + gq * rb + v_swizzle(gq, tb8 & ~15, rb) + (tb8 & 15);
#pragma unroll
      for (int j = 0; j < NH; ++j) {
        const int n = half * NH + j;
        if (n * 8 >= head_size) break;
        const unsigned b0 = load_pair<KV, MT>(v0 + n * 8 * rb);
        const unsigned b1 = load_pair<KV, MT>(v1 + n * 8 * rb);
        mma16816<MT>(o[j], pa, b0, b1);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // Merge the 4 token groups: each publishes (m, l, O) for its 16 rows (O by head half).
  float* m_s = reinterpret_cast<float*>(smem);       // [4][16]
  float* l_s = m_s + 4 * 16;                           // [4][16]
  float* o_s = l_s + 4 * 16;                           // [4][16][head_size]
  publish_group_state(m_s, l_s, o_s, tg, tq == 0 && half == 0, half * NH, m_run, l_run, o, head_size, gq, tq);
  __syncthreads();
  finish_cta<T, O, PA_THREADS8, 4>(m_s, l_s, o_s, v_scale, out, seq, head0, heads_here, head_size, split,
                                  out_stride_seq, out_stride_head, out_stride_part, exp_sums, max_logits,
                                  num_heads, num_partitions, final_out, final_stride_seq, final_stride_head,
                                  split_counters, seq_len, split_tokens, part_tokens, smem);
}

// Tensor-core kernel that fills several partitions per CTA (v2), same arguments as
// paged_decode_mma_kernel; no block-sparse. The CTA's 16 query-head rows (the GQA group, zero-padded) are the
// M dimension of mma.sync m16n8k16. Per 64-token tile: warp w computes S = Q K^T for tokens
// [16w, 16w + 16) and publishes it in shared memory; every warp then runs the same online softmax
// over all 64 tokens and computes O += P V for its quarter of the head dimension, so no warp ever
// merges another's O. A CTA covers split_tokens tokens and writes one result per part_tokens
// tokens (v2: the 512-token partitions of its scratch contract; v1: part = split), resetting its
// softmax state in between: one CTA can fill several partitions without extra shared memory.
//   DMAX    head_size bound (64, 128, 256): sizes the register arrays; head_size % 16 == 0
//   STAGES  cp.async pipeline depth (2..4)
// fp8 caches decode to fp16 in registers and use fp16 mma (e4m3 and e5m2 values are exact in fp16).
template <typename T, typename KV, typename O, int DMAX, int STAGES>
__global__ void __launch_bounds__(PA_THREADS) paged_decode_mma_parts_kernel(PAGED_DECODE_MMA_PARAMS) {
  static_assert(DMAX == 64 || DMAX == 128 || DMAX == 256, "head_size bound");
  static_assert(STAGES >= 2 && STAGES <= 4, "pipeline depth");
  constexpr bool IS_FP8 = sizeof(KV) == 1;
  using MT = typename pick_type<IS_FP8, __half, T>::type;
  constexpr int ELEM = static_cast<int>(sizeof(KV));
  constexpr int KSTEPS = DMAX / 16;
  constexpr int TILE = 64;             // tile_tokens must equal this (the host passes it)
  constexpr int WARPS = PA_THREADS / 32;
  constexpr int NT_WARP = DMAX / 8 / WARPS;  // output n-tiles (8 columns) per warp
  constexpr int S_PITCH = TILE + 4;    // floats per S row in shared memory (bank spread)

  const DecodeCta cta(16, group, seq_lens, max_table_tokens, split_tokens);
  if (exp_sums != nullptr && cta.begin >= cta.seq_len) return;
  const int seq = cta.seq, kv_head = cta.kv_head, head0 = cta.head0, heads_here = cta.heads_here;
  const int seq_len = cta.seq_len, begin = cta.begin, end = cta.end;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gq = lane >> 2, tq = lane & 3;  // mma fragment coordinates

  extern __shared__ __align__(16) unsigned char smem[];
  const int tile_bytes = TILE * head_size * ELEM;
  float* s_s = reinterpret_cast<float*>(smem);  // [16][S_PITCH] scores of the current tile
  unsigned char* k_s = smem + 16 * S_PITCH * 4;
  unsigned char* v_s = k_s + STAGES * tile_bytes;
  const KvTiles<KV> tiles{k_s, v_s,
                          reinterpret_cast<const unsigned char*>(key_cache + kv_head * k_stride_head),
                          reinterpret_cast<const unsigned char*>(value_cache + kv_head * v_stride_head),
                          block_tables + seq * block_tables_stride, k_stride_block, v_stride_block,
                          log2_bs, head_size, TILE, end};
  auto all_blocks = [](int) { return true; };

  const MmaRows<T, KV, MT, KSTEPS> rows(cta, query, q_stride_seq, q_stride_head, alibi_slopes, k_scale_ptr,
                                        v_scale_ptr, scale, head_size, gq, tq);
  const auto& qa = rows.qa;
  // Softmax in base 2, as in the v1 kernels (max logits written back in natural units).
  const float slope[2] = {rows.slope[0] * LOG2E, rows.slope[1] * LOG2E};
  const float s_scale = rows.s_scale * LOG2E, v_scale = rows.v_scale;

  float o[NT_WARP][4];
  float m_run[2], l_run[2];
  auto reset = [&]() {
#pragma unroll
    for (int n = 0; n < NT_WARP; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    m_run[0] = m_run[1] = -PA_FLT_MAX;
    l_run[0] = l_run[1] = 0.0f;
  };
  // Write the current part (softmax over its tokens) to out[..., part, :] and reset.
  auto flush = [&](int part) {
    float l[2];
#pragma unroll
    for (int row = 0; row < 2; ++row) {
      l[row] = l_run[row] + __shfl_xor_sync(0xffffffffu, l_run[row], 1);
      l[row] += __shfl_xor_sync(0xffffffffu, l[row], 2);
    }
#pragma unroll
    for (int n = 0; n < NT_WARP; ++n) {
      const int d = (warp * NT_WARP + n) * 8 + tq * 2;
      if (d >= head_size) break;
#pragma unroll
      for (int row = 0; row < 2; ++row) {
        const int r = gq + row * 8;
        if (r >= heads_here) continue;
        const float inv = v_scale / (l[row] + 1e-6f);
        O* dst = out + seq * out_stride_seq + (head0 + r) * out_stride_head + part * out_stride_part + d;
        dst[0] = from_float<O>(o[n][row * 2] * inv);
        dst[1] = from_float<O>(o[n][row * 2 + 1] * inv);
      }
    }
    if (exp_sums != nullptr && warp == 0 && tq == 0) {
#pragma unroll
      for (int row = 0; row < 2; ++row) {
        const int r = gq + row * 8;
        if (r >= heads_here) continue;
        const long long idx = (static_cast<long long>(seq) * num_heads + head0 + r) * num_partitions + part;
        exp_sums[idx] = l[row];
        max_logits[idx] = m_run[row] * LN2;
      }
    }
    reset();
  };
  reset();

  const int num_tiles = end > begin ? (end - begin + TILE - 1) / TILE : 0;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < num_tiles) tiles.load(begin + s * TILE, s, all_blocks);
    cp_async_commit();
  }
  constexpr int RB = TILE * ELEM;  // V row bytes
  const int tiles_per_part = part_tokens / TILE;
  // Per tile: barrier (tile landed, previous tile fully consumed, its buffer free for the
  // prefetch), S of the warp's 16 tokens -> shared memory, barrier, softmax + P.V.
  for (int it = 0; it < num_tiles; ++it) {
    const int stage = it % STAGES;
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    if (it + STAGES - 1 < num_tiles) tiles.load(begin + (it + STAGES - 1) * TILE, (it + STAGES - 1) % STAGES, all_blocks);
    cp_async_commit();
    const int tile_begin = begin + it * TILE;
    const int valid = min(TILE, end - tile_begin);
    if (valid < TILE) tiles.clear_tail(stage, valid);
    const unsigned char* ks = k_s + stage * tile_bytes;
    const unsigned char* vs = v_s + stage * tile_bytes;

    {  // S for tokens [tw, tw + 16): even and odd k-steps in two independent mma chains
      const int tw = warp * 16;
      float sa[2][4];
      qk_16_tokens<KV, MT, KSTEPS, TILE>(sa, qa, ks, tw, head_size, gq, tq);
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int i = 0; i < 4; i += 2) {
          const int t = tw + nt * 8 + tq * 2;
          const int row = gq + (i >> 1) * 8;
          const float pos = static_cast<float>(tile_begin + t - seq_len + 1);
          float v0 = sa[nt][i] * s_scale, v1 = sa[nt][i + 1] * s_scale;
          if (alibi_slopes != nullptr) {
            v0 += slope[i >> 1] * pos;
            v1 += slope[i >> 1] * (pos + 1.0f);
          }
          if (t >= valid) v0 = neg_inf();
          if (t + 1 >= valid) v1 = neg_inf();
          *reinterpret_cast<float2*>(s_s + row * S_PITCH + t) = make_float2(v0, v1);
        }
    }
    __syncthreads();

    // Online softmax over the tile's 64 tokens (every warp, identically), rows gq and gq + 8.
    // This lane holds tokens 16ks + 2c + {0, 1, 8, 9} for ks = 0..3: exactly its A fragments.
    float p[2][16];
#pragma unroll
    for (int row = 0; row < 2; ++row) {
      const float* srow = s_s + (gq + row * 8) * S_PITCH + tq * 2;
      float mx = -PA_FLT_MAX;
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
        const float2 a = *reinterpret_cast<const float2*>(srow + ks * 16);
        const float2 b = *reinterpret_cast<const float2*>(srow + ks * 16 + 8);
        p[row][ks * 4 + 0] = a.x;
        p[row][ks * 4 + 1] = a.y;
        p[row][ks * 4 + 2] = b.x;
        p[row][ks * 4 + 3] = b.y;
        mx = fmaxf(mx, fmaxf(fmaxf(a.x, a.y), fmaxf(b.x, b.y)));
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[row], mx);
      if (m_new != m_run[row]) {  // the running max rarely moves after the first tiles
        const float alpha = exp2_ftz(m_run[row] - m_new);
        m_run[row] = m_new;
        l_run[row] *= alpha;
#pragma unroll
        for (int n = 0; n < NT_WARP; ++n) {
          o[n][row * 2] *= alpha;
          o[n][row * 2 + 1] *= alpha;
        }
      }
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        p[row][i] = exp2_ftz(p[row][i] - m_run[row]);
        l_run[row] += p[row][i];
      }
    }
    // O[:, warp's columns] += P V: 4 k-steps of 16 tokens.
    const unsigned char* vrow0 = vs + gq * RB;  // row d = 8n + gq shares gq's swizzle
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      if (ks * 16 >= valid) break;
      const unsigned pa[4] = {pack2<MT>(p[0][ks * 4 + 0], p[0][ks * 4 + 1]),
                              pack2<MT>(p[1][ks * 4 + 0], p[1][ks * 4 + 1]),
                              pack2<MT>(p[0][ks * 4 + 2], p[0][ks * 4 + 3]),
                              pack2<MT>(p[1][ks * 4 + 2], p[1][ks * 4 + 3])};
      const int tb = (ks * 16 + tq * 2) * ELEM;
      const int tb8 = tb + 8 * ELEM;
      const int off0 = v_swizzle(gq, tb & ~15, RB) + (tb & 15);
      const int off1 = v_swizzle(gq, tb8 & ~15, RB) + (tb8 & 15);
#pragma unroll
      for (int n = 0; n < NT_WARP; ++n) {
        const int d0 = (warp * NT_WARP + n) * 8;
        if (d0 >= head_size) break;
        const unsigned char* row = vrow0 + d0 * RB;
        mma16816<MT>(o[n], pa, load_pair<KV, MT>(row + off0), load_pair<KV, MT>(row + off1));
      }
    }
    const int done = it + 1;
    if (done == num_tiles || done % tiles_per_part == 0) flush((tile_begin - (tile_begin % part_tokens)) / part_tokens);
  }
  cp_async_wait<0>();
  if (num_tiles == 0 && exp_sums == nullptr) flush(begin / part_tokens);  // empty sequence: zeros
}

}  // namespace cupy_ops
