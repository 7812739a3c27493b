// Tensor-core building blocks of the paged decode kernels (16-bit queries; fp8 caches use fp16
// mma, exact for e4m3 and e5m2 values). The CTA's 16 query-head rows are the M dimension.
#pragma once

#include "mma.cuh"
#include "paged_tiles.cuh"

namespace cupy_ops {

// Q rows head0 .. head0 + 15 (zeros past the group) as A fragments, one set per 16-dim k-step.
// The k index of mma's fragments depends only on the lane's tq, so any fixed order of the 16
// dims works if K uses the same: with PAIRED_QUADS (fp8 caches) lane tq holds dims
// 16kk + 4tq + {0, 1} (k = 2tq, 2tq + 1) and 16kk + 4tq + {2, 3} (k = 2tq + 8, 2tq + 9), so its
// K fragment is 4 contiguous bytes of the token's 16-byte chunk: one load (qk_16_tokens).
template <typename T, typename MT, int KSTEPS, bool PAIRED_QUADS = false>
__device__ __forceinline__ void load_q_fragments(unsigned (&qa)[KSTEPS][4], const T* q_row0,
                                                 long long q_stride_head, int heads_here,
                                                 int head_size, int gq, int tq) {
  auto q_at = [&](int row, int col) {
    return row < heads_here ? to_float(q_row0[row * q_stride_head + col]) : 0.0f;
  };
  const int lo = PAIRED_QUADS ? tq * 4 : tq * 2;  // first dim of k = 2tq, 2tq + 1
  const int hi = PAIRED_QUADS ? tq * 4 + 2 : tq * 2 + 8;  // first dim of k = 2tq + 8, 2tq + 9
#pragma unroll
  for (int kk = 0; kk < KSTEPS; ++kk) {
    const int c0 = kk * 16 + lo, c8 = kk * 16 + hi;
    if (kk * 16 < head_size) {
      qa[kk][0] = pack2<MT>(q_at(gq, c0), q_at(gq, c0 + 1));
      qa[kk][1] = pack2<MT>(q_at(gq + 8, c0), q_at(gq + 8, c0 + 1));
      qa[kk][2] = pack2<MT>(q_at(gq, c8), q_at(gq, c8 + 1));
      qa[kk][3] = pack2<MT>(q_at(gq + 8, c8), q_at(gq + 8, c8 + 1));
    }
  }
}

// S (unscaled) of the 16 tokens [tw, tw + 16) of a K tile ([D/X][tile][X] in shared memory):
// two n-tiles of 8 tokens; even and odd k-steps run as two independent mma chains.
// kk0: the first k-step (16 dims) of qa; a warp may hold only part of the head dimension.
template <typename KV, typename MT, int KSTEPS, int TILE>
__device__ __forceinline__ void qk_16_tokens(float (&s)[2][4], const unsigned (&qa)[KSTEPS][4],
                                             const unsigned char* ks, int tw, int head_size,
                                             int gq, int tq, int kk0 = 0) {
  constexpr int ELEM = static_cast<int>(sizeof(KV));
  constexpr int X = 16 / ELEM;
  constexpr int CHUNKS_PER_KSTEP = 16 / X;  // 2 (16-bit) or 1 (fp8)
  float s_odd[2][4];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) s[nt][i] = s_odd[nt][i] = 0.0f;
  // K word of (dim 16kk + 2c, token tw + 8nt + g): with X = 8 the +8 dims are the next chunk,
  // with X = 16 the same chunk.
  // fp8: Q's dims are in load_q_fragments' PAIRED_QUADS order, so a lane's two pairs are the 4
  // bytes at 4tq of the chunk (one load); 16-bit: dims 2tq, 2tq + 1 and the same in the next chunk.
  const unsigned char* k0 = ks + (tw + gq) * 16 + tq * (ELEM == 1 ? 4 : 2 * ELEM);
#pragma unroll
  for (int kk = 0; kk < KSTEPS; ++kk) {
    if ((kk0 + kk) * 16 >= head_size) break;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const unsigned char* k = k0 + ((kk0 + kk) * CHUNKS_PER_KSTEP * TILE + nt * 8) * 16;
      unsigned b0, b1;
      if constexpr (ELEM == 1) {
        load_fp8_quad<KV>(k, b0, b1);
      } else {
        b0 = load_pair<KV, MT>(k);
        b1 = load_pair<KV, MT>(k + TILE * 16);
      }
      mma16816<MT>((kk & 1) ? s_odd[nt] : s[nt], qa[kk], b0, b1);
    }
  }
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) s[nt][i] += s_odd[nt][i];
}

// What a tensor-core decode CTA holds for its 16 query rows from start to end: Q fragments,
// the rows' ALiBi slopes (rows g and g + 8 of this lane), the logit scale (k_scale folded in) and
// v_scale (applied to the output).
template <typename T, typename KV, typename MT, int KSTEPS>
struct MmaRows {
  unsigned qa[KSTEPS][4];
  float slope[2];
  float s_scale, v_scale;

  __device__ MmaRows(const DecodeCta& cta, const T* query, long long q_stride_seq, long long q_stride_head,
                     const float* alibi_slopes, const float* k_scale_ptr, const float* v_scale_ptr,
                     float scale, int head_size, int gq, int tq, int d0 = 0) {
    constexpr bool IS_FP8 = sizeof(KV) == 1;
    s_scale = scale * (IS_FP8 ? __ldg(k_scale_ptr) : 1.0f);
    v_scale = IS_FP8 ? __ldg(v_scale_ptr) : 1.0f;
    // d0: the first dimension this thread's fragments hold (a warp may own part of the head).
    load_q_fragments<T, MT, KSTEPS, IS_FP8>(qa, query + cta.seq * q_stride_seq + cta.head0 * q_stride_head + d0,
                                    q_stride_head, cta.heads_here, head_size - d0, gq, tq);
#pragma unroll
    for (int row = 0; row < 2; ++row) {
      const int r = gq + row * 8;
      slope[row] = (alibi_slopes != nullptr && r < cta.heads_here) ? __ldg(alibi_slopes + cta.head0 + r) : 0.0f;
    }
  }
};

// Splits merged in the decode launch (the tensor-core kernels' tail; v1 splits, and v2's
// partitions). Each of the `arrivals` CTAs of a (sequence, head chunk) has written its partial
// results: tmp_out[seq][head][p][d] (float for v1's workspace, T for v2's tmp_out; normalised by
// its own exp sum), exp_sums / max_logits[seq][head][p], for the n entries p of the sequence. The
// last CTA to arrive merges the n entries with the log-sum-exp rule into final_out and resets its
// counter to zero for the next call (so CUDA-graph replays start from zero too). Counters start at
// zero (allocated zeroed with the plan's workspace). Shared memory: heads_here * n floats + 1 int,
// reused from the kernel's stages (called after the last barrier of the epilogue).
template <typename T, typename TT, int THREADS>
__device__ void merge_splits_if_last(T* final_out, long long fo_seq, long long fo_head, int* counters,
                                     const float* exp_sums, const float* max_logits,
                                     const TT* tmp_out, int seq, int head0, int heads_here,
                                     int head_size, int num_heads, int num_partitions, int arrivals, int n,
                                     unsigned char* smem) {
  int* last_s = reinterpret_cast<int*>(smem);
  float* w_s = reinterpret_cast<float*>(smem + 16);  // [heads_here][n]
  int* counter = counters + seq * gridDim.y + blockIdx.y;
  __threadfence();  // this CTA's partial results, before it is counted
  __syncthreads();
  if (threadIdx.x == 0) *last_s = atomicAdd(counter, 1) == arrivals - 1;
  __syncthreads();
  if (!*last_s) return;
  __threadfence();  // the other CTAs' partial results, after their counts
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int r = warp; r < heads_here; r += THREADS / 32) {
    const long long base = (static_cast<long long>(seq) * num_heads + head0 + r) * num_partitions;
    float mx = -PA_FLT_MAX;
    for (int p = lane; p < n; p += 32) mx = fmaxf(mx, __ldcg(max_logits + base + p));
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    float sum = 0.0f;
    for (int p = lane; p < n; p += 32) {
      const float w = __ldcg(exp_sums + base + p) * expf(__ldcg(max_logits + base + p) - mx);
      w_s[r * n + p] = w;
      sum += w;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const float inv = 1.0f / (sum + 1e-6f);
    __syncwarp();
    for (int p = lane; p < n; p += 32) w_s[r * n + p] *= inv;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < heads_here * head_size; i += THREADS) {
    const int r = i / head_size, d = i - r * head_size;
    const TT* t = tmp_out + (static_cast<long long>(seq) * num_heads + head0 + r) * num_partitions * head_size + d;
    float acc = 0.0f;
    for (int p = 0; p < n; ++p) acc += to_float(__ldcg(t + static_cast<long long>(p) * head_size)) * w_s[r * n + p];
    final_out[seq * fo_seq + (head0 + r) * fo_head + d] = from_float<T>(acc);
  }
  if (threadIdx.x == 0) *counter = 0;
}

// The end of a v1-style decode CTA (or of one v2 partition inside it) whose WARPS warps each ran
// their own online softmax over part of the tokens and published, in base-2 units, m_s[w][r],
// l_s[w][r] (row pitch `rows`) and o_s[w][r][o_pitch] (unnormalised) for query rows r of the CTA.
// It runs in two steps with a CTA barrier between them (finish_cta below; the GQA kernel spreads
// them over its tile barriers instead):
//   finish_weights  one thread per row turns its warps' (m, l) into final weights (in place of
//                   l_s) and writes the row's statistics;
//   finish_output   every element is then a WARPS-term dot product with no exponential or division
//                   (per element, the earlier form cost WARPS exp2f and a division; v2, which merges
//                   at every 512-token partition, went from 298.9 to 284.7 us at B64 L4096 on
//                   H200, docs/perf.md p20), written to out[seq][head0 + r][part] (v_scale
//                   applied; part: the split, or the v2 partition).
// A running merge (`run`, v2 CTAs that span a whole sequence) folds the CTA's partitions into
// final_out as they finish, so no other launch or CTA re-reads tmp_out: run[0..4 rows) holds per
// row the max M and sum L so far (base 2) and this partition's factors a (old result) and b (this
// partition), then run[4 rows + r * head_size + d] the merged result so far (normalised).
struct WarpMerge {
  float* m_s;
  float* l_s;
  const float* o_s;
  int rows, o_pitch;
  float v_scale;
  float* run;  // nullptr: no running merge
};

// Thread r (< heads_here) of the CTA: row r's weights; stat_idx >= 0: its exp_sums / max_logits
// entry. first: the CTA's first partition (the running merge starts there).
template <int WARPS>
__device__ __forceinline__ void finish_weights(const WarpMerge& wm, int r, float* exp_sums, float* max_logits,
                                               long long stat_idx, bool first) {
  float mx = -PA_FLT_MAX;
#pragma unroll
  for (int w = 0; w < WARPS; ++w) mx = fmaxf(mx, wm.m_s[w * wm.rows + r]);
  float wt[WARPS], l = 0.0f;
#pragma unroll
  for (int w = 0; w < WARPS; ++w) {
    wt[w] = exp2f(wm.m_s[w * wm.rows + r] - mx);
    l += wm.l_s[w * wm.rows + r] * wt[w];
  }
  const float norm = wm.v_scale / (l + 1e-6f);
#pragma unroll
  for (int w = 0; w < WARPS; ++w) wm.l_s[w * wm.rows + r] = wt[w] * norm;
  if (stat_idx >= 0) {
    exp_sums[stat_idx] = l;
    max_logits[stat_idx] = mx * LN2;
  }
  if (wm.run != nullptr) {
    // merged = merged * L_old e^(M_old - M) / L + part * l e^(mx - M) / L (base 2); the first
    // partition's b is exactly 1 (L = l), so a one-partition sequence gets exactly its tmp_out.
    float* run = wm.run;
    const int rows = wm.rows;
    const float m_new = first ? mx : fmaxf(run[r], mx);
    const float kept = first ? 0.0f : run[rows + r] * exp2f(run[r] - m_new);
    const float added = l * exp2f(mx - m_new);
    const float sum = kept + added;
    run[r] = m_new;
    run[rows + r] = sum;
    run[2 * rows + r] = kept / sum;
    run[3 * rows + r] = added / sum;
  }
}

// Every thread: the outputs of rows [0, heads_here). out_row0: out at (seq, head0, part); last:
// write the running merge to final_out (else keep it in run). Without a running merge,
// final_out != nullptr gets the same value as out (v2 with one partition).
template <typename T, typename O, int THREADS, int WARPS>
__device__ __forceinline__ void finish_output(const WarpMerge& wm, int heads_here, int head_size, O* out_row0,
                                              long long out_stride_head, T* final_row0, long long final_stride_head,
                                              bool first, bool last) {
  for (int i = threadIdx.x; i < heads_here * head_size; i += THREADS) {
    const int r = i / head_size, d = i - r * head_size;
    float acc = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) acc += wm.o_s[(w * wm.rows + r) * wm.o_pitch + d] * wm.l_s[w * wm.rows + r];
    const O value = from_float<O>(acc);
    out_row0[r * out_stride_head + d] = value;
    if (wm.run != nullptr) {
      float* merged = wm.run + 4 * wm.rows + r * head_size + d;
      const float b = wm.run[3 * wm.rows + r];
      const float m = first ? acc * b : *merged * wm.run[2 * wm.rows + r] + acc * b;
      if (last) {
        final_row0[r * final_stride_head + d] = from_float<T>(m);
      } else {
        *merged = m;
      }
    } else if (final_row0 != nullptr) {
      final_row0[r * final_stride_head + d] = from_float<T>(to_float(value));
    }
  }
}

// Both steps at the end of a CTA (rows: the pitch of m_s / l_s / o_s; o_pitch 0: head_size), and:
//   exp_sums != nullptr      exp_sums / max_logits (natural units) of this part (v2, split v1)
//   final_out, no counters   the same value to final_out as well (v2 with one partition)
//   split_counters           the last CTA of (seq, head chunk) merges all parts into final_out
template <typename T, typename O, int THREADS, int WARPS, int ROWS = 16>
__device__ void finish_cta(const float* m_s, float* l_s, const float* o_s, float v_scale, O* out,
                           int seq, int head0, int heads_here, int head_size, int part,
                           long long out_stride_seq, long long out_stride_head, long long out_stride_part,
                           float* exp_sums, float* max_logits, int num_heads, int num_partitions,
                           T* final_out, long long final_stride_seq, long long final_stride_head,
                           int* split_counters, int seq_len, int split_tokens, int part_tokens,
                           unsigned char* smem, int o_pitch = 0) {
  const WarpMerge wm{const_cast<float*>(m_s), l_s, o_s, ROWS, o_pitch == 0 ? head_size : o_pitch, v_scale, nullptr};
  const int r = threadIdx.x;
  if (r < heads_here)
    finish_weights<WARPS>(wm, r, exp_sums, max_logits,
                          exp_sums != nullptr ? (static_cast<long long>(seq) * num_heads + head0 + r) * num_partitions + part : -1,
                          true);
  __syncthreads();
  finish_output<T, O, THREADS, WARPS>(wm, heads_here, head_size, out + seq * out_stride_seq + head0 * out_stride_head + part * out_stride_part,
                                      out_stride_head,
                                      (final_out != nullptr && split_counters == nullptr)
                                          ? final_out + seq * final_stride_seq + head0 * final_stride_head : nullptr,
                                      final_stride_head, true, false);
  if (split_counters != nullptr)
    merge_splits_if_last<T, O, THREADS>(final_out, final_stride_seq, final_stride_head, split_counters, exp_sums,
                                        max_logits, out, seq, head0, heads_here, head_size, num_heads,
                                        num_partitions, (seq_len + split_tokens - 1) / split_tokens,
                                        (seq_len + part_tokens - 1) / part_tokens, smem);
}

// An empty sequence when final_out is given (split v1, one-partition v2): no CTA has a result,
// so split 0 writes zeros.
template <typename T, int THREADS>
__device__ void zero_empty_sequence(T* final_out, long long fo_seq, long long fo_head, int seq,
                                    int head0, int heads_here, int head_size) {
  for (int i = threadIdx.x; i < heads_here * head_size; i += THREADS) {
    const int r = i / head_size, d = i - r * head_size;
    final_out[seq * fo_seq + (head0 + r) * fo_head + d] = from_float<T>(0.0f);
  }
}

}  // namespace cupy_ops
