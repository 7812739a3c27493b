// paged_attention (tensor cores, group as N): decode attention over vLLM's paged KV cache for
// 16-bit queries, with the GQA group as the N dimension of mma.sync m16n8k16 and the tokens as M.
//
// Same math, grid, arguments and outputs as paged_decode_mma_kernel (paged_attention_mma.cu; the
// formula and the v2 scratch contract are in paged_attention.cu's header). What differs is how the
// products are laid out. The other kernels put the query heads in M (16 rows, padded from the
// group) and compute S = Q K^T; here each warp computes S^T = K Q^T for 16 tokens x 8 heads:
//   - a group of <= 8 heads pads to 8, not 16: half the mma work, half the exponentials and half
//     the accumulator registers per token of the other layout (group 4: 50% padding, not 75%);
//   - K and V are the A operands, loaded straight from the shared tiles with ldmatrix (16-bit
//     caches: one instruction per 16x16 fragment instead of four 32-bit loads);
//   - P^T feeds O^T += V^T P^T after an in-register 8x8 transpose (movmatrix), no shared memory.
// Each of the 4 warps owns 16 tokens of every 64-token tile with its own online softmax; the warps'
// (m, l, O) merge once at the CTA's end (merge_warps). A v2 CTA over several partitions gives each
// warp its own partition, 4 at a time (token_at below), so a partition's result needs no merge.
// Stages are filled by bulk copies (block sizes 8, 16) or cp.async (see the loader below).
// Why (docs/perf.md, p14-p17): on H200 the head-as-M 8-warp kernel issued ~460 instructions per
// warp per tile at 0.47 IPC per scheduler and 3.7 TB/s, while a read-only kernel with the same
// pipeline streams 4.38 TB/s: the math, not the copies, set the pace.
// Bytes floor: K and V once, as in paged_attention.cu.
//
// Template parameters:
//   T       query / output element type: __half or __nv_bfloat16
//   KV      cache element type: T, or __nv_fp8_e4m3 / __nv_fp8_e5m2 (decoded to fp16 in registers:
//           exact; fp16 mma; k_scale folded into the logit scale, v_scale into the output)
//   O       element type written to `out`: T, or float (v1's split partials)
//   DMAX    head_size bound (64, 128, 256): sizes the register arrays; head_size % 16 == 0
//   STAGES  pipeline depth (2..4), from gqa_stages() in ops/paged_attention.py
//   HT      head n-tiles: 1 (<= 8 query heads per CTA) or 2 (<= 16)
//   MULTI   CTAs may span several v2 partitions (part_tokens < split_tokens; part_tokens = 512,
//           block sizes <= 16): v2's instantiations only (O = T; HT 2 only up to DMAX 128, where
//           it needs ~214-236 registers, no spills; d256 spilled). v1's loop is smaller without
//           that code (H200, docs/perf.md p22e).
//   EXACT   head_size == DMAX (the host guarantees it): loop bounds known at compile time.
// fp8 fragments: a lane's k-indices {2c, 2c+1, 2c+8, 2c+9} of a 16-wide k-step are mapped to four
// consecutive elements (dims 4c..4c+3 of K, tokens 4c..4c+3 of V), so each is one 32-bit shared
// load; Q's B fragments use the same dimension order, and the S rows (tokens) follow the V token
// order so that P^T, transposed, lines up with V^T's k-indices.
#include "common/dtypes.cuh"
#include "common/math.cuh"
#include "common/paged_tiles.cuh"
#include "common/mma.cuh"
#include "common/paged_mma.cuh"

namespace cupy_ops {

// Token (0..15 within a warp's 16) held by S^T row m: the identity for 16-bit caches; for fp8 the
// order that makes V's k-indices {2c, 2c+1, 2c+8, 2c+9} the tokens 4c..4c+3.
template <bool FP8>
__device__ __forceinline__ int s_row_token(int m) {
  if constexpr (!FP8) return m;
  const int r = m & 7;
  return ((r >> 1) << 2) + (r & 1) + ((m >> 3) << 1);
}

// Minimum CTAs per SM, which caps ptxas's registers: 4 (128 registers) where the stages leave
// room for 4 CTAs (head size 64; fp8 head size 128 with <= 8 heads: 4 CTAs per SM make B64 L4096
// one wave, docs/perf.md p20); else 2: 16-bit head size 128 runs 2 CTAs per SM (shared memory)
// and ptxas's own choice of 128 registers spilled inside the tile loop there.
template <typename T, typename KV, typename O, int DMAX, int STAGES, int HT, bool MULTI, bool EXACT>
__global__ void __launch_bounds__(PA_THREADS, (DMAX == 64 || (sizeof(KV) == 1 && DMAX == 128 && HT == 1)) ? 4 : 2)
    paged_decode_gqa_kernel(PAGED_DECODE_MMA_PARAMS) {
  static_assert(DMAX == 64 || DMAX == 128 || DMAX == 256, "head_size bound");
  static_assert(STAGES >= 2 && STAGES <= 4, "pipeline depth");
  static_assert(HT == 1 || HT == 2, "8 or 16 query heads per CTA");
  static_assert(!MULTI || HT == 1 || DMAX <= 128, "16 heads per CTA over several partitions: head sizes <= 128");
  // The head size, a constant when it is DMAX (EXACT): the k-step and m-tile loops then have no
  // per-step bound test (~30 of ~200 instructions per warp and tile: ncu SASS, H200 p25b).
  const int hd = EXACT ? DMAX : head_size;
  constexpr bool IS_FP8 = sizeof(KV) == 1;
  using MT = typename pick_type<IS_FP8, __half, T>::type;
  constexpr int ELEM = static_cast<int>(sizeof(KV));
  constexpr int KSTEPS = DMAX / 16;   // 16-dim k-steps of S^T = K Q^T; also 16-dim m-tiles of O^T
  constexpr int HEADS = 8 * HT;
  constexpr int TILE = 64;            // tile_tokens must equal this (the host passes it)
  constexpr int WARPS = PA_THREADS / 32;

  const DecodeCta cta(HEADS, group, seq_lens, max_table_tokens, split_tokens);
  if (exp_sums != nullptr && cta.begin >= cta.seq_len) {
    if (final_out != nullptr && cta.seq_len == 0 && cta.split == 0)
      zero_empty_sequence<T, PA_THREADS>(final_out, final_stride_seq, final_stride_head, cta.seq, cta.head0,
                                         cta.heads_here, hd);
    return;
  }
  const int seq = cta.seq, head0 = cta.head0, heads_here = cta.heads_here;
  const int seq_len = cta.seq_len, begin = cta.begin, end = cta.end;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, c = lane & 3;  // mma fragment coordinates

  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ __align__(8) unsigned long long full_bar[STAGES];  // bulk path: one per stage
  const int tile_bytes = TILE * hd * ELEM;
  unsigned char* k_s = smem;
  unsigned char* v_s = smem + STAGES * tile_bytes;
  // Two ways to fill a stage (both keep one CTA barrier per tile):
  //   bulk      block sizes 8 and 16 with 16-byte aligned caches: warp 0 issues one cp.async.bulk
  //             per cache block for K and for V (the copy engine moves 2-4 KB per instruction)
  //             and the stage's mbarrier says when they landed. The tile keeps the blocks' own
  //             layouts: K [block][D/X][bs][X], V [block][D][bs] (bs 16: 2-way bank conflicts on V
  //             fragments, which bs >= 32 would make 4- to 8-way: those take the other path).
  //   cp.async  every thread copies 16-byte words into the swizzled tile layout of
  //             paged_tiles.cuh (TileCopier); any block size.
  // The per-thread cp.async loader was ~40% of the instructions of a tile (ncu/SASS, H200).
  const int block_size = 1 << log2_bs, block_bytes = hd * block_size * ELEM;
  const bool bulk = CUPY_OPS_HAS_BULK_COPY && (log2_bs == 3 || log2_bs == 4) &&
                    ((reinterpret_cast<unsigned long long>(key_cache) | reinterpret_cast<unsigned long long>(value_cache) |
                      static_cast<unsigned long long>((k_stride_block | k_stride_head | v_stride_block | v_stride_head) * ELEM)) &
                     15) == 0;
  const KvTiles<KV> tiles{k_s, v_s,
                          reinterpret_cast<const unsigned char*>(key_cache + cta.kv_head * k_stride_head),
                          reinterpret_cast<const unsigned char*>(value_cache + cta.kv_head * v_stride_head),
                          block_tables + seq * block_tables_stride, k_stride_block, v_stride_block,
                          log2_bs, hd, TILE, end};
  auto all_blocks = [](int) { return true; };
  const TileCopier<KV> copier(tiles);

  // Q^T as B fragments (k = dims, n = heads): lane holds head 8h + g, dims lo/hi of each k-step.
  // Loaded after the first stages' copies are issued (load_q below): a CTA's first global reads
  // are then its KV stream, with the query rows' latency behind them instead of in front.
  unsigned qb[KSTEPS][HT][2];
  float slope2[HT][2];  // ALiBi slopes (base 2) of this lane's S columns: heads 8h + 2c, + 1
  auto load_slopes = [&](int h) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int col = 8 * h + 2 * c + j;
      slope2[h][j] = (alibi_slopes != nullptr && col < heads_here) ? __ldg(alibi_slopes + head0 + col) * LOG2E : 0.0f;
    }
  };
  auto load_q = [&]() {
    const int lo = IS_FP8 ? 4 * c : 2 * c, hi = IS_FP8 ? 4 * c + 2 : 2 * c + 8;
    const T* q0 = query + seq * q_stride_seq + head0 * q_stride_head;
    // The CTA's query rows, staged through shared memory 16 bytes per thread, arrive in one global
    // round trip; per-lane loads of the fragments went out as 8 dependent batches of 4 (ncu, H200
    // p25b: 11% of all stall samples at B256 L1024, ~2 us per CTA; staged: B256 -3%, docs/perf.md).
    // Room: stage STAGES - 1's K tile (64 x head_size cache elements >= 16 x (head_size + 8)
    // query elements), whose copy goes out only after iteration 0's barrier (the barrier at the
    // end of load_q); rows padded by 8 elements so that the 8 rows a warp reads at once start in
    // different banks.
    const int q_pitch = hd + 8;
    T* const q_s = reinterpret_cast<T*>(k_s + (STAGES - 1) * tile_bytes);
    constexpr int QV = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte load
    const bool q_vec = ((reinterpret_cast<unsigned long long>(q0) | static_cast<unsigned long long>(q_stride_head * sizeof(T))) & 15) == 0;
    if (q_vec) {
      const int per_row = hd / QV;  // head_size % 16 == 0
      for (int i = tid; i < heads_here * per_row; i += PA_THREADS) {
        const int r = i / per_row, v = (i - r * per_row) * QV;
        *reinterpret_cast<uint4*>(q_s + r * q_pitch + v) = __ldg(reinterpret_cast<const uint4*>(q0 + r * q_stride_head + v));
      }
    } else {  // a query view not 16-byte aligned: element loads, 8 in flight per thread
#pragma unroll 8
      for (int i = tid; i < heads_here * hd; i += PA_THREADS) {
        const int r = i / hd, col = i - r * hd;
        q_s[r * q_pitch + col] = q0[r * q_stride_head + col];
      }
    }
#pragma unroll
    for (int h = 0; h < HT; ++h) load_slopes(h);
    __syncthreads();
#pragma unroll
    for (int h = 0; h < HT; ++h) {
      const int r = 8 * h + g;
      // Elements col, col + 1 (col even) of row r as one B-fragment register (one 32-bit load).
      auto q_pair = [&](int col) -> unsigned {
        if (r >= heads_here) return 0u;
        Vec<T, 2> v;
        v.raw = *reinterpret_cast<const unsigned*>(q_s + r * q_pitch + col);
        if constexpr (!IS_FP8) return v.raw;  // MT is T: the word is the fragment
        return pack2<MT>(to_float(v.get(0)), to_float(v.get(1)));
      };
#pragma unroll
      for (int kk = 0; kk < KSTEPS; ++kk) {
        if (kk * 16 < hd) {
          qb[kk][h][0] = q_pair(kk * 16 + lo);
          qb[kk][h][1] = q_pair(kk * 16 + hi);
        }
      }
    }
    // The bulk path's refill of stage STAGES - 1 writes these bytes through the async proxy.
    if (bulk) fence_proxy_async_smem();
    __syncthreads();  // every warp has its fragments before stage STAGES - 1 is refilled
  };
  // Softmax in base 2 (logits times log2 e, exp2_ftz); max logits are written back in natural units.
  const float s_scale = scale * (IS_FP8 ? __ldg(k_scale_ptr) : 1.0f) * LOG2E;
  const float v_scale = IS_FP8 ? __ldg(v_scale_ptr) : 1.0f;

  float o[KSTEPS][HT][4];  // O^T: dims 16mt + g (+ 8) x heads 8h + 2c (+ 1)
  float m_run[HT][2], l_run[HT][2];
  auto reset_softmax = [&]() {  // at the start of the CTA and of each v2 round
#pragma unroll
    for (int h = 0; h < HT; ++h) {
      m_run[h][0] = m_run[h][1] = -PA_FLT_MAX;
      l_run[h][0] = l_run[h][1] = 0.0f;
#pragma unroll
      for (int mt = 0; mt < KSTEPS; ++mt) o[mt][h][0] = o[mt][h][1] = o[mt][h][2] = o[mt][h][3] = 0.0f;
    }
  };
  reset_softmax();

  // Which 16 tokens of a tile each warp takes. v1, and v2 CTAs of one partition: warp w the
  // tokens 16w..16w+15 of 64 consecutive ones. v2 CTAs over several 512-token partitions (MULTI,
  // part_tokens < split_tokens): each warp its own partition, in rounds of 4 partitions (a warp
  // reads 16 tokens of its partition per tile), so that a partition's result is one warp's, written
  // from its registers when the round ends: no barrier, no merge, and at most one round end per
  // 2048 tokens. The CTA's last round has 1-4 partitions: 3 or 4 take one warp each (with 3 the
  // fourth warp idles), 2 two warps each, 1 all four (the v1 layout); its warps merge at the end.
  // (MULTI: part_tokens is v2's 512, a constant here: no division, and registers under the
  // 128 of fp8's 4 CTAs per SM.)
  static_assert(WARPS == 4 && TILE == 64, "the round layout below");
  constexpr int V2_PART = 512, ROUND_TILES = V2_PART / 16;  // a full round: 16 tokens per warp and tile
  const bool multi_part = MULTI && part_tokens < split_tokens;
  const int first_part = MULTI ? begin / V2_PART : begin / part_tokens;
  const int parts_here = multi_part ? (end - begin + V2_PART - 1) / V2_PART : 1;
  const int full_rounds = (parts_here - 1) / WARPS;
  const int last_parts = parts_here - full_rounds * WARPS;
  const int last_lp = last_parts >= 3 ? 2 : last_parts - 1;  // log2 of the last round's partitions at once
  const int last_tile0 = full_rounds * ROUND_TILES;                // the last round's first tile
  const int last_begin = begin + full_rounds * WARPS * V2_PART;     // and first token
  const int last_lw = 2 - last_lp;                                  // log2 of its warps per partition
  // The sequence token at tile position p (0..63) of tile `it` (position p is warp p / 16's).
  auto token_at = [&](int it, int p) {
    if constexpr (!MULTI) {
      return begin + it * TILE + p;
    } else {
      const int w = p >> 4;
      if (it < last_tile0)
        return begin + (it / ROUND_TILES) * (WARPS * V2_PART) + w * V2_PART + ((it % ROUND_TILES) << 4) + (p & 15);
      return last_begin + (w >> last_lw) * V2_PART + ((it - last_tile0) << (6 - last_lp)) +
             ((w & ((1 << last_lw) - 1)) << 4) + (p & 15);
    }
  };
  int num_tiles = 0;
  if (end > begin) {
    if constexpr (MULTI) {  // the last round: as many tiles as its first partition needs
      const int span_log2 = 6 - last_lp;
      num_tiles = last_tile0 + ((min(end - last_begin, V2_PART) + (1 << span_log2) - 1) >> span_log2);
    } else {
      num_tiles = (end - begin + TILE - 1) / TILE;
    }
  }

  // Where warps publish (m, l, O) for the end-of-CTA merge, over the free stages: [WARPS][rows] m
  // and l, [WARPS][rows][o_pitch] O, rows = the most query heads a CTA of this launch has (O rows
  // padded by 4 floats: the 4 lanes of a quad write different columns of the same dims, which an
  // unpadded pitch of a multiple of 32 floats put in one bank).
  float* const region = reinterpret_cast<float*>(smem);
  const int rows = min(HEADS, group), o_pitch = hd + 4;
  // The warp's exp sum of the query head column (h, j) this lane holds (heads 8h + 2c + j).
  auto column_sum = [&](int h, int j) {
    float l = l_run[h][j];
    l += __shfl_xor_sync(0xffffffffu, l, 4);
    l += __shfl_xor_sync(0xffffffffu, l, 8);
    return l + __shfl_xor_sync(0xffffffffu, l, 16);
  };
  auto publish = [&]() {
    float* m_s = region;
    float* l_s = m_s + WARPS * rows;
    float* o_s = l_s + WARPS * rows;
#pragma unroll
    for (int h = 0; h < HT; ++h)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const float l = column_sum(h, j);
        const int col = 8 * h + 2 * c + j;
        if (col >= heads_here) continue;
        if (g == 0) {
          m_s[warp * rows + col] = m_run[h][j];
          l_s[warp * rows + col] = l;
        }
        float* orow = o_s + (warp * rows + col) * o_pitch;
#pragma unroll
        for (int mt = 0; mt < KSTEPS; ++mt) {
          if (mt * 16 >= hd) break;
          orow[mt * 16 + g] = o[mt][h][j];
          orow[mt * 16 + g + 8] = o[mt][h][j + 2];
        }
      }
  };
  // A full round's end: this warp's partition `part`, normalised, to out (tmp_out) with its
  // statistics, straight from the registers (the same values as merge_warps of one warp).
  auto flush_warp = [&](int part) {
#pragma unroll
    for (int h = 0; h < HT; ++h)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const float l = column_sum(h, j);
        const int col = 8 * h + 2 * c + j;
        if (col >= heads_here) continue;
        const float norm = __fdividef(v_scale, l + 1e-6f);
        O* orow = out + seq * out_stride_seq + (head0 + col) * out_stride_head + part * out_stride_part;
#pragma unroll
        for (int mt = 0; mt < KSTEPS; ++mt) {
          if (mt * 16 >= hd) break;
          orow[mt * 16 + g] = from_float<O>(o[mt][h][j] * norm);
          orow[mt * 16 + g + 8] = from_float<O>(o[mt][h][j + 2] * norm);
        }
        if (g == 0 && exp_sums != nullptr) {
          const long long idx = (static_cast<long long>(seq) * num_heads + head0 + col) * num_partitions + part;
          exp_sums[idx] = l;
          max_logits[idx] = m_run[h][j] * LN2;
        }
      }
  };
  // Per-lane shared addresses (stage 0) of the fragments, fixed for the whole kernel, and the
  // steps between 16-wide k-steps of K (k_step) and 16-row m-tiles of V^T (v_step) in the
  // stage's layout; v_row8: V row d + 8 from row d (fp8).
  const int tw = warp * 16;  // this warp's first token in each tile
  const int tok_g = s_row_token<IS_FP8>(g), tok_g8 = s_row_token<IS_FP8>(g + 8);
  constexpr int RB = TILE * ELEM;  // V row bytes (cp.async layout)
  // Byte of (token t, K chunk j) and of (token t, V row d) in a stage of either layout.
  auto k_at = [&](int t, int j) {
    return bulk ? (t >> log2_bs) * block_bytes + ((j << log2_bs) + (t & (block_size - 1))) * 16 : (j * TILE + t) * 16;
  };
  auto v_at = [&](int t, int d) {  // t: first of >= 4 tokens inside one 16-byte group
    return bulk ? (t >> log2_bs) * block_bytes + ((d << log2_bs) + (t & (block_size - 1))) * ELEM
                : d * RB + v_swizzle(d, (t * ELEM) & ~15, RB) + ((t * ELEM) & 15);
  };
  const int k_step = (IS_FP8 ? 1 : 2) * (bulk ? block_size : TILE) * 16;
  const int v_step = 16 * (bulk ? block_size * ELEM : RB);
  const int v_row8 = v_step / 2;
  unsigned k_frag, v_frag;
  if constexpr (IS_FP8) {
    // K: 4 bytes at dims 4c of rows tok_g / tok_g8 (chunk kk = 16 dims; tok_g8 = tok_g + 2, same
    // block). V: tokens tw + 4c..+3 of rows 16mt + g / + 8 (same swizzle: (d & 3) equal).
    k_frag = smem_addr(k_s) + k_at(tw + tok_g, 0) + 4 * c;
    v_frag = smem_addr(v_s) + v_at(tw + 4 * c, g);
  } else {
    // ldmatrix.x4 row addresses: lane i gives row (i & 7) of matrix i >> 3.
    const int mat = lane >> 3, r = lane & 7;
    // K matrices: {tokens 0-7, 8-15} x {dims 0-7, 8-15} of the k-step -> a0..a3.
    k_frag = smem_addr(k_s) + k_at(tw + r + (mat & 1) * 8, mat >> 1);
    // V^T matrices: {dims 0-7, 8-15} x {tokens 0-7, 8-15} of the m-tile -> a0..a3.
    v_frag = smem_addr(v_s) + v_at(tw + (mat >> 1) * 8, r + (mat & 1) * 8);
  }

  // Bulk path: warp 0 fills a stage, lane u copying cache block u of the tile (<= 8 blocks), from
  // the kv head's bases and the table row that `tiles` holds. The lane's table entry (physical
  // block, -1 past the end) is read one tile ahead (table_entry) and passed in: read where it is
  // used, its L2 latency (~500 cycles) held warp 0 up every tile and the three other warps waited
  // for it at the next barrier (ncu, H200 p24: a quarter of all stall samples at that barrier).
  auto table_entry = [&](int it_load) -> int {
    const int p = lane << log2_bs;  // the first tile position of this lane's block
    if (warp != 0 || p >= TILE) return -1;
    const int tok = token_at(it_load, p);
    return tok < end ? __ldg(tiles.table + (tok >> log2_bs)) : -1;
  };
  auto bulk_load = [&](int stage, int phys) {
    if (warp != 0) return;
    const unsigned bar = smem_addr(&full_bar[stage]);
    const bool live = phys >= 0;
    const int live_blocks = __popc(__ballot_sync(0xffffffffu, live));
    if (lane == 0) mbar_arrive_expect_tx(bar, live_blocks * 2 * block_bytes);
    if (live) {
      const unsigned dst = stage * tile_bytes + lane * block_bytes;
      bulk_copy_g2s(smem_addr(k_s) + dst, tiles.k_base + static_cast<long long>(phys) * k_stride_block * ELEM,
                    block_bytes, bar);
      bulk_copy_g2s(smem_addr(v_s) + dst, tiles.v_base + static_cast<long long>(phys) * v_stride_block * ELEM,
                    block_bytes, bar);
    }
  };
  auto copy_load = [&](int it_load, int stage) {  // the cp.async path
    copier.load_mapped([&](int p) { return token_at(it_load, p); }, stage, all_blocks);
    cp_async_commit();
  };
  if (bulk && tid == 0) {
#pragma unroll
    for (int st = 0; st < STAGES; ++st) mbar_init(smem_addr(&full_bar[st]), 1);
    mbar_init_fence();
  }
  __syncthreads();

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < num_tiles) {
      if (bulk) {
        bulk_load(s, table_entry(s));
      } else {
        copy_load(s, s);
      }
    } else if (!bulk) {
      cp_async_commit();  // keep one cp.async group per stage
    }
  }
  // Bulk path: warp 0's table entry of the next tile to fill (tile it + STAGES - 1 at iteration it),
  // and the refill of tile it_next's stage, which reads the entry of the tile after it.
  int next_phys = bulk && STAGES - 1 < num_tiles ? table_entry(STAGES - 1) : -1;
  auto bulk_refill = [&](int it_next) {
    bulk_load(it_next % STAGES, next_phys);
    next_phys = it_next + 1 < num_tiles ? table_entry(it_next + 1) : -1;
  };
  load_q();
  // One barrier per tile: after it every warp is done with tile it - 1, whose buffer the prefetch
  // of tile it + STAGES - 1 then overwrites (cp.async: the barrier also publishes tile `it`).
  // The rounds as an outer loop, their tiles as the inner one: with the round end inside the tile
  // loop (p23's first form) ptxas copied the accumulators around it, ~190 moves per tile (ncu,
  // H200: v2 B256 69.7 M warp instructions against v1's 38.8 M).
  // (Per-stage "empty" mbarriers instead of the CTA barrier, each warp releasing its stage and
  // warp 0 waiting before the refill, ran ~20% slower on every shape: H200, p25c, docs/perf.md.)
  int it = 0;
  for (int round = 0; round <= full_rounds; ++round) {
    if (round > 0) {  // a full round ended: each warp's partition, from its registers
      flush_warp(first_part + (round - 1) * WARPS + warp);
      reset_softmax();
    }
    const int round_end = round < full_rounds ? (round + 1) * ROUND_TILES : num_tiles;
    // This warp's first token of tile `it`, advanced by a constant step within the round (ncu,
    // p23c: recomputing it from `it` cost 26 instructions per tile at v2 B64).
    const int step = round < full_rounds ? 16 : (TILE >> last_lp);
    int tok0 = token_at(it, tw);
    for (; it < round_end; ++it, tok0 += step) {
      const int stage = it % STAGES;
      if (bulk) {
        // Wait for tile `it`, then the barrier, then the refill of tile it - 1's stage. (Barrier,
        // refill, wait keeps STAGES tiles in flight during the wait instead of STAGES - 1, but
        // with the table entries prefetched it ran 1-2% slower: H200, p25b, docs/perf.md.)
        mbar_wait_parity(smem_addr(&full_bar[stage]), (it / STAGES) & 1);
        __syncthreads();
        if (it + STAGES - 1 < num_tiles) bulk_refill(it + STAGES - 1);
      } else {
        // cp.async: a thread's wait covers its own copies only, so the barrier must follow it.
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (it + STAGES - 1 < num_tiles) {
          copy_load(it + STAGES - 1, (it + STAGES - 1) % STAGES);
        } else {
          cp_async_commit();
        }
      }
      const int valid = min(16, end - tok0);
      if (valid <= 0) continue;
      if (valid < 16) {
        // Tokens past the end (garbage of a partly used block, or blocks not copied): V must be
        // zero there (probability 0 times NaN is NaN). Only this warp reads its 16 tokens.
        unsigned char* vs0 = v_s + stage * tile_bytes;
        const int rest = 16 - valid;
        for (int i = lane; i < hd * rest; i += 32) {
          const int d = i / rest, t = tw + valid + (i - d * rest);
          unsigned char* p = vs0 + v_at(t, d);
#pragma unroll
          for (int b = 0; b < ELEM; ++b) p[b] = 0;
        }
        // Generic-proxy writes: fenced before the stage's next bulk copy (async proxy) overwrites them.
        if (bulk) fence_proxy_async_smem();
        __syncwarp();
      }
#ifdef CUPY_OPS_EXP_SKIP_MATH  // experiment (tools/exp_paged_parts.py): the pipeline alone
      continue;
#endif
      const unsigned ks = k_frag + stage * tile_bytes, vs = v_frag + stage * tile_bytes;

      // S^T (16 tokens x 8 heads per n-tile); even and odd k-steps in two independent chains.
      float s[HT][4], s_odd[HT][4];
#pragma unroll
      for (int h = 0; h < HT; ++h)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[h][i] = s_odd[h][i] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KSTEPS; ++kk) {
        if (kk * 16 >= hd) break;
        unsigned a[4];
        if constexpr (IS_FP8) {
          const unsigned w0 = lds32(ks + kk * k_step), w1 = lds32(ks + kk * k_step + 2 * 16);
          fp8x4_to_half2x2<KV>(w0, a[0], a[2]);
          fp8x4_to_half2x2<KV>(w1, a[1], a[3]);
        } else {
          ldmatrix_x4(a, ks + kk * k_step);
        }
#pragma unroll
        for (int h = 0; h < HT; ++h) mma16816<MT>((kk & 1) ? s_odd[h] : s[h], a, qb[kk][h][0], qb[kk][h][1]);
      }
      // Scale, ALiBi, mask; online softmax per head column (this lane: heads 8h + 2c + {0, 1}).
      const bool tail = valid < 16;
      const float pos0 = static_cast<float>(tok0 + tok_g - seq_len + 1);
      const float pos8 = static_cast<float>(tok0 + tok_g8 - seq_len + 1);
      unsigned pb[HT][2];  // P^T as B fragments of O^T += V^T P^T (k = tokens, n = heads)
#pragma unroll
      for (int h = 0; h < HT; ++h) {
        float v[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          v[i] = (s[h][i] + s_odd[h][i]) * s_scale;
          if (alibi_slopes != nullptr) v[i] += slope2[h][i & 1] * (i < 2 ? pos0 : pos8);
        }
        if (tail) {
          if (tok_g >= valid) v[0] = v[1] = neg_inf();
          if (tok_g8 >= valid) v[2] = v[3] = neg_inf();
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          float mx = fmaxf(v[j], v[j + 2]);
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
          const float m_new = fmaxf(m_run[h][j], mx);
          if (m_new != m_run[h][j]) {  // the running max rarely moves after the first tiles
            const float alpha = exp2_ftz(m_run[h][j] - m_new);
            m_run[h][j] = m_new;
            l_run[h][j] *= alpha;
#pragma unroll
            for (int mt = 0; mt < KSTEPS; ++mt) {
              o[mt][h][j] *= alpha;
              o[mt][h][j + 2] *= alpha;
            }
          }
          v[j] = exp2_ftz(v[j] - m_run[h][j]);
          v[j + 2] = exp2_ftz(v[j + 2] - m_run[h][j]);
          l_run[h][j] += v[j] + v[j + 2];
        }
        // Rows 0-7 and 8-15 of P^T's C fragment, transposed: B's k-indices 0-7 and 8-15.
        pb[h][0] = movmatrix_trans(pack2<MT>(v[0], v[1]));
        pb[h][1] = movmatrix_trans(pack2<MT>(v[2], v[3]));
      }
      // O^T += V^T P^T, one 16-dim m-tile at a time.
#pragma unroll
      for (int mt = 0; mt < KSTEPS; ++mt) {
        if (mt * 16 >= hd) break;
#ifdef CUPY_OPS_EXP_SKIP_PV  // experiment: P V for the first 16 dims only
        if (mt > 0) break;
#endif
        unsigned a[4];
        if constexpr (IS_FP8) {
          const unsigned w0 = lds32(vs + mt * v_step), w1 = lds32(vs + mt * v_step + v_row8);
          fp8x4_to_half2x2<KV>(w0, a[0], a[2]);
          fp8x4_to_half2x2<KV>(w1, a[1], a[3]);
        } else {
          ldmatrix_x4(a, vs + mt * v_step);
        }
#pragma unroll
        for (int h = 0; h < HT; ++h) mma16816<MT>(o[mt][h], a, pb[h][0], pb[h][1]);
      }
    }
  }
  if (!bulk) cp_async_wait<0>();  // bulk: every stage that was filled was also waited for
  __syncthreads();
  // The CTA's end (the stages are free now): the warps publish, and one pass merges each partition
  // of the last round (v2; groups of WARPS / 2^last_lp warps), the CTA's split (v1) or its one
  // partition. final_out without counters (a v2 CTA over its whole sequence, or one partition):
  // from all the warps when the CTA had one round, else from the partition results it wrote
  // (merge_partitions).
  const bool own = multi_part && final_out != nullptr && split_counters == nullptr;
  T* final_row0 = (final_out != nullptr && split_counters == nullptr && full_rounds == 0)
                      ? final_out + seq * final_stride_seq + head0 * final_stride_head : nullptr;
  const int part0 = first_part + full_rounds * WARPS;  // the last round's first partition
  const long long stat_row0 = (static_cast<long long>(seq) * num_heads + head0) * num_partitions;
  publish();
  // A CTA over its whole sequence with earlier rounds: their partition results (flushed before
  // the last round's first tile barrier, so visible now) join the last round's warps for out; the
  // first batch's loads go out before the barrier.
  constexpr int PRE = 4;
  const bool fold = MULTI && own && full_rounds > 0;
  const bool aligned = (reinterpret_cast<unsigned long long>(out) & (4 * sizeof(O) - 1)) == 0 &&
                       (out_stride_part & 3) == 0 && (out_stride_head & 3) == 0;
  const O* tmp_row0 = out + seq * out_stride_seq + head0 * out_stride_head + first_part * out_stride_part;
  PartitionBatch<O, PRE> pre;
  const bool preloaded = fold && aligned && tid < heads_here * (hd >> 2);
  if (preloaded) {
    const int quads = hd >> 2, r = tid / quads, d = (tid - r * quads) * 4;
    pre.load(max_logits, exp_sums, stat_row0 + r * num_partitions + first_part, tmp_row0 + r * out_stride_head + d,
             out_stride_part, 0, full_rounds * WARPS);
  }
  __syncthreads();
  merge_warps<T, O, PA_THREADS, WARPS>(
      region, rows, o_pitch, 2 - last_lp, last_parts, v_scale, heads_here, hd,
      out + seq * out_stride_seq + head0 * out_stride_head + part0 * out_stride_part, out_stride_head,
      out_stride_part, exp_sums, max_logits, exp_sums != nullptr ? stat_row0 + part0 : -1, num_partitions,
      final_row0, final_stride_head);
  if (fold && aligned) {
    merge_with_partitions<T, O, PA_THREADS, WARPS, PRE>(
        region, rows, o_pitch, v_scale, heads_here, hd, exp_sums, max_logits, stat_row0 + first_part,
        num_partitions, tmp_row0, out_stride_head, out_stride_part, full_rounds * WARPS, pre, preloaded,
        final_out + seq * final_stride_seq + head0 * final_stride_head, final_stride_head);
  } else if (fold) {  // a caller's tmp_out view not aligned to 4 elements
    __syncthreads();  // the last round's results (global) written by all warps; the region's last reads
    merge_partitions<T, O, PA_THREADS>(final_out, final_stride_seq, final_stride_head, exp_sums, max_logits, out, seq,
                                       head0, heads_here, hd, num_heads, num_partitions,
                                       (seq_len + part_tokens - 1) / part_tokens, region);
  }
  if (split_counters != nullptr)
    merge_splits_if_last<T, O, PA_THREADS>(final_out, final_stride_seq, final_stride_head, split_counters, exp_sums,
                                           max_logits, out, seq, head0, heads_here, hd, num_heads,
                                           num_partitions, (seq_len + split_tokens - 1) / split_tokens,
                                           (seq_len + part_tokens - 1) / part_tokens, smem);
}

}  // namespace cupy_ops
