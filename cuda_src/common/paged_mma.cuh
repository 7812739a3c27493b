// Tensor-core building blocks of the paged decode kernels (16-bit queries; fp8 caches use fp16
// mma, exact for e4m3 and e5m2 values). The CTA's 16 query-head rows are the M dimension.
#pragma once

#include "mma.cuh"
#include "paged_tiles.cuh"
#include "vec.cuh"

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

// The log-sum-exp merge of a (sequence, head chunk)'s n partial results into final_out, by the
// whole CTA: tmp_out[seq][head][p][d] (float for v1's workspace, T for v2's tmp_out; normalised
// by its own exp sum), exp_sums / max_logits[seq][head][p] (natural units), p < n, written by
// this CTA or by others before a fence. Shared memory: heads_here * n floats from w_s, reused
// from the kernel's stages (the caller's barrier before: those writes and the stages' last reads).
template <typename T, typename TT, int THREADS>
__device__ void merge_partitions(T* final_out, long long fo_seq, long long fo_head, const float* exp_sums,
                                 const float* max_logits, const TT* tmp_out, int seq, int head0, int heads_here,
                                 int head_size, int num_heads, int num_partitions, int n, float* w_s) {
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
  // 4 dims of a row per thread with one vector load per entry, BATCH entries loaded before any is
  // used: this tail is latency bound (L2 reads of what the other CTAs just wrote), so what counts
  // is the loads in flight. (p21's vector form with `unroll 4` kept fewer in flight than the
  // scalar loop, which ptxas had batched ~16 deep: docs/perf.md.) A tmp_out base that is not
  // aligned to 4 elements (a caller's view) takes the scalar loop.
  constexpr int BATCH = 8;
  const bool vec4 = (reinterpret_cast<unsigned long long>(tmp_out) & (4 * sizeof(TT) - 1)) == 0;
  const int per = vec4 ? 4 : 1, units = head_size / per;
  for (int i = threadIdx.x; i < heads_here * units; i += THREADS) {
    const int r = i / units, d = (i - r * units) * per;
    const TT* t = tmp_out + (static_cast<long long>(seq) * num_heads + head0 + r) * num_partitions * head_size + d;
    const float* w = w_s + r * n;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (vec4) {
      for (int p0 = 0; p0 < n; p0 += BATCH) {
        Vec<TT, 4> v[BATCH];
#pragma unroll
        for (int k = 0; k < BATCH; ++k)
          if (p0 + k < n) v[k].raw = __ldcg(reinterpret_cast<const typename Vec<TT, 4>::Raw*>(t + static_cast<long long>(p0 + k) * head_size));
#pragma unroll
        for (int k = 0; k < BATCH; ++k)
          if (p0 + k < n)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[e] += to_float(v[k].get(e)) * w[p0 + k];
      }
    } else {
      for (int p = 0; p < n; ++p) acc[0] += to_float(__ldcg(t + static_cast<long long>(p) * head_size)) * w[p];
    }
    T* f = final_out + seq * fo_seq + (head0 + r) * fo_head + d;
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (e < per) f[e] = from_float<T>(acc[e]);
  }
}

// Splits merged in the decode launch (the tensor-core kernels' tail; v1 splits, and v2's
// partitions). Each of the `arrivals` CTAs of a (sequence, head chunk) has written its partial
// results (as merge_partitions reads them); the last CTA to arrive merges them into final_out and
// resets its counter to zero for the next call (so CUDA-graph replays start from zero too).
// Counters start at zero (allocated zeroed with the plan's workspace). Shared memory: 16 bytes,
// then merge_partitions' weights.
template <typename T, typename TT, int THREADS>
__device__ void merge_splits_if_last(T* final_out, long long fo_seq, long long fo_head, int* counters,
                                     const float* exp_sums, const float* max_logits,
                                     const TT* tmp_out, int seq, int head0, int heads_here,
                                     int head_size, int num_heads, int num_partitions, int arrivals, int n,
                                     unsigned char* smem) {
  int* last_s = reinterpret_cast<int*>(smem);
  int* counter = counters + seq * gridDim.y + blockIdx.y;
  __threadfence();  // this CTA's partial results, before it is counted
  __syncthreads();
  if (threadIdx.x == 0) *last_s = atomicAdd(counter, 1) == arrivals - 1;
  __syncthreads();
  if (!*last_s) return;
  __threadfence();  // the other CTAs' partial results, after their counts
  merge_partitions<T, TT, THREADS>(final_out, fo_seq, fo_head, exp_sums, max_logits, tmp_out, seq, head0,
                                   heads_here, head_size, num_heads, num_partitions, n,
                                   reinterpret_cast<float*>(smem + 16));
  if (threadIdx.x == 0) *counter = 0;
}

// The end of a v1-style decode CTA (or of one v2 partition inside it) whose WARPS warps each ran
// their own online softmax over part of the tokens and published, in base-2 units, m_s[w][r],
// l_s[w][r] (row pitch ROWS) and o_s[w][r][head_size] (unnormalised) for query rows r of the CTA,
// followed by a barrier. Merges the warps per row and writes out[seq][head0 + r][part] (v_scale
// applied; part: the split, or the v2 partition), and:
//   exp_sums != nullptr      exp_sums / max_logits (natural units) of this part (v2, split v1)
//   final_out, no counters   the same value to final_out as well (v2 with one partition)
//   split_counters           the last CTA of (seq, head chunk) merges all parts into final_out
// One thread per row first turns its warps' (m, l) into final weights (in place of l_s) and
// writes the row's statistics; then every element is a WARPS-term dot product with no
// exponential or division (docs/perf.md p20). Used by the head-as-M kernels, which merge once
// per CTA; the GQA kernel uses merge_warps below (one step, no barrier inside, any subset of
// its warps).
template <typename T, typename O, int THREADS, int WARPS, int ROWS = 16>
__device__ void finish_cta(const float* m_s, float* l_s, const float* o_s, float v_scale, O* out,
                           int seq, int head0, int heads_here, int head_size, int part,
                           long long out_stride_seq, long long out_stride_head, long long out_stride_part,
                           float* exp_sums, float* max_logits, int num_heads, int num_partitions,
                           T* final_out, long long final_stride_seq, long long final_stride_head,
                           int* split_counters, int seq_len, int split_tokens, int part_tokens,
                           unsigned char* smem) {
  const int r0 = threadIdx.x;
  if (r0 < heads_here) {
    float mx = -PA_FLT_MAX;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) mx = fmaxf(mx, m_s[w * ROWS + r0]);
    float wt[WARPS], l = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      wt[w] = exp2f(m_s[w * ROWS + r0] - mx);
      l += l_s[w * ROWS + r0] * wt[w];
    }
    const float norm = v_scale / (l + 1e-6f);
#pragma unroll
    for (int w = 0; w < WARPS; ++w) l_s[w * ROWS + r0] = wt[w] * norm;
    if (exp_sums != nullptr) {
      const long long idx = (static_cast<long long>(seq) * num_heads + head0 + r0) * num_partitions + part;
      exp_sums[idx] = l;
      max_logits[idx] = mx * LN2;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < heads_here * head_size; i += THREADS) {
    const int r = i / head_size, d = i - r * head_size;
    float acc = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) acc += o_s[(w * ROWS + r) * head_size + d] * l_s[w * ROWS + r];
    const O value = from_float<O>(acc);
    out[seq * out_stride_seq + (head0 + r) * out_stride_head + part * out_stride_part + d] = value;
    if (final_out != nullptr && split_counters == nullptr)
      final_out[seq * final_stride_seq + (head0 + r) * final_stride_head + d] = from_float<T>(to_float(value));
  }
  if (split_counters != nullptr)
    merge_splits_if_last<T, O, THREADS>(final_out, final_stride_seq, final_stride_head, split_counters, exp_sums,
                                        max_logits, out, seq, head0, heads_here, head_size, num_heads,
                                        num_partitions, (seq_len + split_tokens - 1) / split_tokens,
                                        (seq_len + part_tokens - 1) / part_tokens, smem);
}

// The GQA kernel's warps' published states (publish() in paged_attention_gqa.cu): base-2 m[w][r],
// l[w][r] and unnormalised O[w][r][o_pitch] for WARPS warps and `rows` query rows.
template <int WARPS>
struct WarpStates {
  const float* region;
  int rows, o_pitch;
  __device__ float m(int w, int r) const { return region[w * rows + r]; }
  __device__ float l(int w, int r) const { return region[(WARPS + w) * rows + r]; }
  __device__ float4 o4(int w, int r, int d) const {
    return *reinterpret_cast<const float4*>(region + 2 * WARPS * rows + (w * rows + r) * o_pitch + d);
  }
};

// The GQA kernel's merge of its warps' results at the CTA's end, after the barrier that follows
// the warps' publish (no barrier inside). What the warps published (base-2 units, unnormalised O):
// m[WARPS][rows], l[WARPS][rows], o[WARPS][rows][o_pitch] (o_pitch % 4 == 0, 16-byte aligned)
// from `region`. The warps form groups of 2^lw consecutive warps, each group one result: a v1
// split, or a v2 partition (out_row0 + s * out_stride_part for group s; the first `groups` are
// written). Each thread takes 4 consecutive dims of a row, loads the 4 warps' values once and
// computes every group's weights itself (no barrier, ~20 independent instructions per group; H200,
// docs/perf.md p22, p23). Writes, v_scale applied: out rows, and for stat_row0 >= 0 exp_sums /
// max_logits at stat_row0 + row * stat_stride + s (natural units); final_row0 != nullptr: the
// merge of all the warps as the final output (out's value rounded to T when there is one group,
// so that a one-partition v2 and v1 agree bit for bit).
template <typename T, typename O, int THREADS, int WARPS>
__device__ __forceinline__ void merge_warps(const float* region, int rows, int o_pitch, int lw, int groups,
                                            float v_scale, int heads_here, int head_size, O* out_row0,
                                            long long out_stride_head, long long out_stride_part, float* exp_sums,
                                            float* max_logits, long long stat_row0, long long stat_stride,
                                            T* final_row0, long long final_stride_head) {
  const WarpStates<WARPS> st{region, rows, o_pitch};
  const int quads = head_size >> 2;
  for (int idx = threadIdx.x; idx < heads_here * quads; idx += THREADS) {
    const int r = idx / quads, d = (idx - r * quads) * 4;
    float m[WARPS], l[WARPS];
    float4 ow[WARPS];
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      m[w] = st.m(w, r);
      l[w] = st.l(w, r);
      ow[w] = st.o4(w, r, d);
    }
    // Groups 0 .. groups - 1, then (s == WARPS) all the warps for the final output.
#pragma unroll
    for (int s = 0; s <= WARPS; ++s) {
      const bool all = s == WARPS;
      if (all ? (final_row0 == nullptr || groups == 1) : s >= groups) continue;
      float mx = -PA_FLT_MAX, sum = 0.0f, wt[WARPS];
#pragma unroll
      for (int w = 0; w < WARPS; ++w)
        if (all || (w >> lw) == s) mx = fmaxf(mx, m[w]);
#pragma unroll
      for (int w = 0; w < WARPS; ++w) {
        wt[w] = (all || (w >> lw) == s) ? exp2_ftz(m[w] - mx) : 0.0f;
        sum += l[w] * wt[w];
      }
      const float norm = __fdividef(v_scale, sum + 1e-6f);
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int w = 0; w < WARPS; ++w) {
        const float k = wt[w] * norm;
        acc[0] += ow[w].x * k;
        acc[1] += ow[w].y * k;
        acc[2] += ow[w].z * k;
        acc[3] += ow[w].w * k;
      }
      if (!all) {
        O* o = out_row0 + s * out_stride_part + r * out_stride_head + d;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const O value = from_float<O>(acc[k]);
          o[k] = value;
          acc[k] = to_float(value);
        }
        if (d == 0 && stat_row0 >= 0) {
          exp_sums[stat_row0 + r * stat_stride + s] = sum;
          max_logits[stat_row0 + r * stat_stride + s] = mx * LN2;
        }
      }
      if (final_row0 != nullptr && (all || groups == 1)) {
        T* f = final_row0 + r * final_stride_head + d;
#pragma unroll
        for (int k = 0; k < 4; ++k) f[k] = from_float<T>(acc[k]);
      }
    }
  }
}

// Up to BATCH partition results of one (row, 4 dims) item, for merge_with_partitions: max logits
// in base 2 (-FLT_MAX past n), exp sums (0 past n) and 4 dims of the normalised rows.
template <typename TT, int BATCH>
struct PartitionBatch {
  float m2[BATCH], es[BATCH], x[BATCH][4];
  // Entries p0 .. p0 + BATCH - 1 (< n) of a row: statistics at stat_row, values from `row` (16-byte
  // aligned, entries `pitch` elements apart).
  __device__ void load(const float* max_logits, const float* exp_sums, long long stat_row, const TT* row,
                       long long pitch, int p0, int n) {
#pragma unroll
    for (int k = 0; k < BATCH; ++k) {
      const bool live = p0 + k < n;
      m2[k] = live ? __ldcg(max_logits + stat_row + p0 + k) * LOG2E : -PA_FLT_MAX;
      es[k] = live ? __ldcg(exp_sums + stat_row + p0 + k) : 0.0f;
      Vec<TT, 4> v;
      if (live) v.raw = __ldcg(reinterpret_cast<const typename Vec<TT, 4>::Raw*>(row + (p0 + k) * pitch));
#pragma unroll
      for (int e = 0; e < 4; ++e) x[k][e] = live ? to_float(v.get(e)) : 0.0f;
    }
  }
};

// The final output of a GQA CTA over its whole sequence with more than one round of partitions:
// the merge of the n partition results it wrote in its earlier rounds (tmp_out rows, exp_sums,
// max_logits; n is a multiple of 4) with its warps' published states of the last round (base 2,
// unnormalised O, as merge_warps reads them), after the barrier that follows the publish. Each
// thread takes 4 dims of a row; its first item's first BATCH entries may come preloaded (`pre`,
// loads issued before that barrier so that their L2 latency hides behind it and merge_warps).
// Replaces merge_partitions after merge_warps: no barrier, no weights pass, and the last round's
// results are not re-read (docs/perf.md p24). tmp_out 16-byte aligned per row (vec4).
template <typename T, typename TT, int THREADS, int WARPS, int BATCH>
__device__ void merge_with_partitions(const float* region, int rows, int o_pitch, float v_scale, int heads_here,
                                      int head_size, const float* exp_sums, const float* max_logits,
                                      long long stat_row0, long long stat_stride, const TT* tmp_row0,
                                      long long tmp_stride_head, long long tmp_stride_part, int n,
                                      const PartitionBatch<TT, BATCH>& pre,
                                      bool preloaded, T* final_row0, long long final_stride_head) {
  const WarpStates<WARPS> st{region, rows, o_pitch};
  const int quads = head_size >> 2;
  for (int idx = threadIdx.x; idx < heads_here * quads; idx += THREADS) {
    const int r = idx / quads, d = (idx - r * quads) * 4;
    float mx = -PA_FLT_MAX, den = 0.0f, num[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int w = 0; w < WARPS; ++w) mx = fmaxf(mx, st.m(w, r));
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      const float wt = exp2_ftz(st.m(w, r) - mx);
      const float4 ow = st.o4(w, r, d);
      den += st.l(w, r) * wt;
      num[0] += ow.x * wt;
      num[1] += ow.y * wt;
      num[2] += ow.z * wt;
      num[3] += ow.w * wt;
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) num[e] *= v_scale;  // the rows below carry v_scale already
    const TT* row = tmp_row0 + r * tmp_stride_head + d;
    for (int p0 = 0; p0 < n; p0 += BATCH) {
      PartitionBatch<TT, BATCH> b;
      if (preloaded && p0 == 0 && idx == threadIdx.x) {
        b = pre;
      } else {
        b.load(max_logits, exp_sums, stat_row0 + r * stat_stride, row, tmp_stride_part, p0, n);
      }
      float mb = mx;
#pragma unroll
      for (int k = 0; k < BATCH; ++k) mb = fmaxf(mb, b.m2[k]);
      const float kept = exp2_ftz(mx - mb);
      den *= kept;
#pragma unroll
      for (int e = 0; e < 4; ++e) num[e] *= kept;
#pragma unroll
      for (int k = 0; k < BATCH; ++k) {
        const float wt = b.es[k] * exp2_ftz(b.m2[k] - mb);
        den += wt;
#pragma unroll
        for (int e = 0; e < 4; ++e) num[e] += b.x[k][e] * wt;
      }
      mx = mb;
    }
    const float inv = __fdividef(1.0f, den + 1e-6f);
    T* f = final_row0 + r * final_stride_head + d;
#pragma unroll
    for (int k = 0; k < 4; ++k) f[k] = from_float<T>(num[k] * inv);
  }
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
