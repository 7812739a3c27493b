// vertical_slash: MInference's per-query-tile sparse layout (vLLM's
// convert_vertical_slash_indexes and convert_vertical_slash_indexes_mergehead; spec
// vertical_slash.md). For batch item b, head h and query tile r (BLOCK queries), emit the key
// blocks (BLOCK wide, raw start offsets) covering the head's slashes and the vertical key columns
// that no block covers, in exactly the order of vLLM's serial merge (spec §4).
//
// Notation (spec §3): q = q_seqlens[b], kv = kv_seqlens[b], start = r * BLOCK; the tile's frontier
// F = (causal ? kv - q : kv) + start + BLOCK; slash s has the segment end e(s) = max(F - s, BLOCK).
// S is the slash row (descending), V the vertical row (ascending).
//
// Closed form of the serial merge (derived from spec §4, checked against the reference):
//  * Slashes. The first slash s0 is S[k0], k0 = the first k with S[k] < F (else the last one).
//    If s0 > F there is a single "no slash" range [F, F+BLOCK) (causal) or [kv, kv+BLOCK).
//    Otherwise the slashes k0, k0+1, ... (non-causal: only while S[k] >= start) build ranges: a
//    range anchored at segment end a (lo = a - BLOCK) absorbs slash k unless
//        e_k > hi_{k-1} + BLOCK,  hi_{k-1} = a + BLOCK * ceil((e_{k-1} - a) / BLOCK),
//    Why: vLLM grows a range by exactly BLOCK per slash whose segment ends past it, so after
//    slash k the range end is the one value in [e_k, e_k + BLOCK) congruent to a modulo BLOCK.
//    Otherwise slash k starts a new range anchored at e_k (the previous one ends at hi_{k-1}).
//    A new range needs e_k - e_{k-1} > BLOCK, hence a raw gap S[k-1] - S[k] > BLOCK: only these
//    "jump" indices (few in practice) are tested, 32 at a time with a ballot.
//  * Verticals. A vertical is a column iff it lies in a gap before a range ([end of the previous
//    range, lo)); in non-causal mode also when it lies right of the last range (and < kv). The
//    columns of a gap are a contiguous slice of V (two lower bounds).
//  * Blocks of a range [lo, hi): lo, lo + BLOCK, ... below min(hi, kv); none when lo >= kv.
//
// Grid: 1-D, block id = (b * num_heads + h) * row_chunks + chunk. A thread block serves one (b, h)
// and the tiles r = chunk + i * row_chunks (strided, so that cheap early tiles and costly late
// causal tiles mix); each warp builds one tile at a time with warp-wide searches and writes.
// With STAGED the block first copies the head's slash and vertical rows to shared memory and
// lists the jump indices there; without it (rows too long for shared memory) it reads the rows
// from global memory and tests every slash index as a possible jump.
//
// Template parameters:
//   BLOCK      block_size_M == block_size_N: 32, 64 or 128
//   CAUSAL     true: queries are the last q of the kv keys; false: all keys precede the queries
//   MERGEHEAD  true: per-head valid lengths from vertical_indices_count / slash_indices_count,
//              and only the entries vLLM's mergehead op defines are written (tiles with
//              start < q, entries below the counts). false: the plain op; every entry of the
//              four outputs is written, zeros where no value is defined.
//   STAGED     rows in shared memory: 4 * (2 * nnz_s + nnz_v) bytes of dynamic shared memory
//   THREADS    threads per block (whole warps)
// Runtime arguments: num_heads (H), n_rows = ceil(context_size / BLOCK), nnz_v / nnz_s (row
// lengths of the index buffers and of the outputs), row_chunks (thread blocks per (b, h)).
// Outputs are dense row-major int32: counts [B, H, n_rows], offsets [B, H, n_rows, nnz_s],
// columns [B, H, n_rows, nnz_v]; 64-bit row offsets.
//
// Robustness (deliberate difference from vLLM): without validation the inputs may be anything;
// every read index is inside its row, every loop is bounded by a row length, tiles never pass
// n_rows, counts are clamped to [1, nnz], and no row receives more than its capacity. Invalid
// input then gives meaningless but bounded output instead of vLLM's hangs and overflows.
//
// Bytes floor: the plain op writes all outputs, 4 * B*H*n_rows * (2 + nnz_s + nnz_v) bytes; the
// mergehead op writes only the defined entries (about kv / BLOCK offsets per late causal tile).
#include "common/warp.cuh"

namespace cupy_ops {
namespace vertical_slash {

// One (b, h)'s index rows, in shared or global memory, and its jump list.
template <bool STAGED>
struct IndexRows {
  const int* slash;  // S, descending
  const int* vert;   // V, ascending
  const int* jumps;  // STAGED: ascending k in [1, ns) with S[k-1] - S[k] > BLOCK
  int ns, nv, n_jumps;

  __device__ __forceinline__ long long s(int k) const { return STAGED ? slash[k] : __ldg(slash + k); }
  __device__ __forceinline__ long long v(int i) const { return STAGED ? vert[i] : __ldg(vert + i); }
  // Slash index of candidate j. Without a jump list every index 1..ns-1 is a candidate.
  __device__ __forceinline__ int jump(int j) const { return STAGED ? jumps[j] : j + 1; }

  // Candidates j whose slash index lies in (k_after, k_before): [x, y).
  __device__ __forceinline__ int2 jumps_between(int k_after, int k_before) const {
    if (STAGED) {
      const int* js = jumps;
      const int first = warp_partition_point(0, n_jumps, [&](int j) { return js[j] <= k_after; });
      return make_int2(first, warp_partition_point(first, n_jumps, [&](int j) { return js[j] < k_before; }));
    }
    // jump(j) = j + 1 > k_after  <=>  j >= k_after
    return make_int2(k_after, k_before - 1 > k_after ? k_before - 1 : k_after);
  }
};

// Writes one tile's layout: ranges arrive left to right, each with the columns of the gap
// before it. Counts are warp-uniform; lanes write consecutive entries.
template <int BLOCK, bool STAGED>
struct TileWriter {
  int* offsets;          // the tile's block_offset row (capacity cap_s)
  int* columns;          // the tile's column_index row (capacity cap_v)
  int cap_s, cap_v;
  long long kv;
  int n_blocks, n_columns;
  int v_next;            // first vertical at or right of the previous range's end

  __device__ __forceinline__ void add_columns(const IndexRows<STAGED>& rows, int begin, int end) {
    const int room = cap_v - n_columns;
    const int count = end - begin < room ? end - begin : room;
    for (int i = lane_id(); i < count; i += 32) columns[n_columns + i] = static_cast<int>(rows.v(begin + i));
    n_columns += count;
  }

  __device__ __forceinline__ void range(const IndexRows<STAGED>& rows, long long lo, long long hi) {
    // Columns: the verticals in [previous end, lo). Verticals in [lo, hi) are covered.
    const int gap_end = warp_partition_point(v_next, rows.nv, [&](int i) { return rows.v(i) < lo; });
    add_columns(rows, v_next, gap_end);
    v_next = warp_partition_point(gap_end, rows.nv, [&](int i) { return rows.v(i) < hi; });
    // Blocks: lo, lo + BLOCK, ... below min(hi, kv).
    const long long top = hi < kv ? hi : kv;
    if (lo < kv && top > lo) {
      const long long n = (top - lo + BLOCK - 1) / BLOCK;
      const int room = cap_s - n_blocks;
      const int count = n < room ? static_cast<int>(n) : room;
      for (int i = lane_id(); i < count; i += 32) {
        offsets[n_blocks + i] = static_cast<int>(lo + static_cast<long long>(i) * BLOCK);
      }
      n_blocks += count;
    }
  }

  // Non-causal: verticals right of the last range that are keys (< kv) are columns too.
  __device__ __forceinline__ void tail(const IndexRows<STAGED>& rows) {
    const long long limit = kv;
    const int end = warp_partition_point(v_next, rows.nv, [&](int i) { return rows.v(i) < limit; });
    add_columns(rows, v_next, end);
    v_next = end;
  }
};

// End of a range anchored at a after absorbing segment end e: the first value >= e that is
// congruent to a modulo BLOCK (never below a).
template <int BLOCK>
__device__ __forceinline__ long long range_end(long long anchor, long long e) {
  const long long d = e > anchor ? e - anchor : 0;
  return anchor + (d + BLOCK - 1) / BLOCK * BLOCK;
}

template <int BLOCK, bool CAUSAL, bool STAGED>
__device__ __forceinline__ void build_tile(const IndexRows<STAGED>& rows, TileWriter<BLOCK, STAGED>& out,
                           long long q, long long kv, int r) {
  const int lane = lane_id();
  const long long start = static_cast<long long>(r) * BLOCK;
  const long long frontier = (CAUSAL ? kv - q : kv) + start + BLOCK;
  auto seg_end = [&](int k) {
    const long long e = frontier - rows.s(k);
    return e > BLOCK ? e : static_cast<long long>(BLOCK);
  };

  // Initial slash: skip slashes >= F while another one exists.
  int k0 = warp_partition_point(0, rows.ns, [&](int k) { return rows.s(k) >= frontier; });
  if (k0 == rows.ns) k0 = rows.ns - 1;
  if (rows.s(k0) > frontier) {
    const long long lo = CAUSAL ? frontier : kv;   // "no slash" range
    out.range(rows, lo, lo + BLOCK);
  } else {
    long long anchor = seg_end(k0);
    long long lo = anchor - BLOCK;
    // Non-causal: slashes below start would give segments at or past kv; the scan stops there.
    const int k_end = CAUSAL ? rows.ns
                             : warp_partition_point(k0 + 1, rows.ns, [&](int k) { return rows.s(k) >= start; });
    const int2 cands = rows.jumps_between(k0, k_end);
    for (int j0 = cands.x; j0 < cands.y; j0 += 32) {
      const int j = j0 + lane;
      const bool candidate = j < cands.y;
      long long e_here = 0, e_before = 0;
      if (candidate) {
        const int k = rows.jump(j);
        e_here = seg_end(k);
        e_before = seg_end(k - 1);
      }
      // Resolve the new ranges among these 32 candidates in order: each ballot finds the next
      // one given the current anchor; candidates after it are re-tested against the new anchor.
      int done = -1;
      for (;;) {
        const bool starts = candidate && lane > done &&
                            e_here > range_end<BLOCK>(anchor, e_before) + BLOCK;
        const unsigned hits = __ballot_sync(kFullWarp, starts);
        if (hits == 0) break;
        const int f = __ffs(hits) - 1;
        const long long end_before = range_end<BLOCK>(anchor, __shfl_sync(kFullWarp, e_before, f));
        out.range(rows, lo, end_before);
        anchor = __shfl_sync(kFullWarp, e_here, f);
        lo = anchor - BLOCK;
        done = f;
      }
    }
    out.range(rows, lo, range_end<BLOCK>(anchor, seg_end(k_end - 1)));
  }
  if (!CAUSAL) out.tail(rows);
}

// dst[0..n) = src[0..n): each thread issues UNROLL loads before storing any, so a block keeps
// THREADS * UNROLL loads in flight instead of waiting out one L2/DRAM latency per element
// (6000 slashes with one load at a time would be ~24 dependent latencies per thread).
template <int THREADS, int UNROLL = 8>
__device__ __forceinline__ void copy_to_shared(int* dst, const int* src, int n) {
  for (int base = 0; base < n; base += THREADS * UNROLL) {
    int v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int i = base + u * THREADS + static_cast<int>(threadIdx.x);
      if (i < n) v[u] = __ldg(src + i);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int i = base + u * THREADS + static_cast<int>(threadIdx.x);
      if (i < n) dst[i] = v[u];
    }
  }
}

// Copies the rows to shared memory and lists the jump indices (ascending). Every thread of the
// block calls it. Each warp compacts one contiguous slice of 1..ns-1; slices are concatenated
// in order through per-warp totals.
template <int BLOCK, int THREADS>
__device__ int stage_rows(int* s_slash, int* s_vert, int* s_jumps, const int* slash_row,
                          const int* vert_row, int ns, int nv) {
  constexpr int WARPS = THREADS / 32;
  __shared__ int warp_jumps[WARPS];
  copy_to_shared<THREADS>(s_slash, slash_row, ns);
  copy_to_shared<THREADS>(s_vert, vert_row, nv);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = lane_id();
  const int slice = (ns - 1 + WARPS - 1) / WARPS;
  const int begin = 1 + warp * slice;
  const int end = begin + slice < ns ? begin + slice : ns;
  auto is_jump = [&](int k) {
    return static_cast<long long>(s_slash[k - 1]) - s_slash[k] > BLOCK;
  };
  int mine = 0;
  for (int k0 = begin; k0 < end; k0 += 32) {
    const int k = k0 + lane;
    mine += __popc(__ballot_sync(kFullWarp, k < end && is_jump(k)));
  }
  if (lane == 0) warp_jumps[warp] = mine;
  __syncthreads();
  int pos = 0, total = 0;
  for (int w = 0; w < WARPS; ++w) {
    pos += w < warp ? warp_jumps[w] : 0;
    total += warp_jumps[w];
  }
  for (int k0 = begin; k0 < end; k0 += 32) {
    const int k = k0 + lane;
    const bool hit = k < end && is_jump(k);
    const unsigned hits = __ballot_sync(kFullWarp, hit);
    if (hit) s_jumps[pos + lanes_below(hits)] = k;
    pos += __popc(hits);
  }
  __syncthreads();
  return total;
}

__device__ __forceinline__ int clamp_count(int count, int cap) {
  return count < 1 ? 1 : (count > cap ? cap : count);
}

}  // namespace vertical_slash

template <int BLOCK, bool CAUSAL, bool MERGEHEAD, bool STAGED, int THREADS>
__global__ void __launch_bounds__(THREADS) vertical_slash_kernel(
    int* block_count, int* block_offset, int* column_count, int* column_index,
    const int* q_seqlens, const int* kv_seqlens,
    const int* vertical_indexes, const int* slash_indexes,
    const int* vertical_indices_count, const int* slash_indices_count,
    int num_heads, int n_rows, int nnz_v, int nnz_s, int row_chunks) {
  static_assert(BLOCK == 32 || BLOCK == 64 || BLOCK == 128, "block_size_M == block_size_N in {32, 64, 128}");
  static_assert(THREADS % 32 == 0 && THREADS >= 32, "whole warps");
  constexpr int WARPS = THREADS / 32;
  using namespace vertical_slash;

  const int chunk = static_cast<int>(blockIdx.x % static_cast<unsigned>(row_chunks));
  const long long bh = blockIdx.x / static_cast<unsigned>(row_chunks);  // b * num_heads + h
  const int h = static_cast<int>(bh % num_heads);
  const long long b = bh / num_heads;
  const long long q = q_seqlens[b];
  const long long kv = kv_seqlens[b];
  // Tiles vLLM writes: start < q. Never past n_rows (vLLM would write into the next head).
  const long long q_tiles = q > 0 ? (q + BLOCK - 1) / BLOCK : 0;
  const int tiles = static_cast<int>(q_tiles < n_rows ? q_tiles : n_rows);
  const int rows_written = MERGEHEAD ? tiles : n_rows;
  if (chunk >= rows_written) return;  // block-uniform: before any barrier

  IndexRows<STAGED> rows;
  rows.ns = MERGEHEAD ? clamp_count(slash_indices_count[h], nnz_s) : nnz_s;
  rows.nv = MERGEHEAD ? clamp_count(vertical_indices_count[h], nnz_v) : nnz_v;
  const int* slash_row = slash_indexes + bh * nnz_s;
  const int* vert_row = vertical_indexes + bh * nnz_v;
  if constexpr (STAGED) {
    extern __shared__ int smem[];
    int* s_slash = smem;
    int* s_vert = smem + nnz_s;
    int* s_jumps = s_vert + nnz_v;
    rows.slash = s_slash;
    rows.vert = s_vert;
    rows.jumps = s_jumps;
    rows.n_jumps = chunk < tiles ? stage_rows<BLOCK, THREADS>(s_slash, s_vert, s_jumps, slash_row,
                                                              vert_row, rows.ns, rows.nv)
                                 : 0;  // block-uniform: only zero rows to write
  } else {
    rows.slash = slash_row;
    rows.vert = vert_row;
    rows.jumps = nullptr;
    rows.n_jumps = 0;
  }

  const int warp = threadIdx.x / 32;
  const int lane = lane_id();
  for (int r = chunk + warp * row_chunks; r < rows_written; r += WARPS * row_chunks) {
    const long long row = bh * n_rows + r;
    TileWriter<BLOCK, STAGED> out;
    out.offsets = block_offset + row * nnz_s;
    out.columns = column_index + row * nnz_v;
    out.cap_s = nnz_s;
    out.cap_v = nnz_v;
    out.kv = kv;
    out.n_blocks = 0;
    out.n_columns = 0;
    out.v_next = 0;
    if (r < tiles) build_tile<BLOCK, CAUSAL, STAGED>(rows, out, q, kv, r);
    if (!MERGEHEAD) {  // the plain op's outputs are zero wherever nothing was emitted
      for (int i = out.n_blocks + lane; i < nnz_s; i += 32) out.offsets[i] = 0;
      for (int i = out.n_columns + lane; i < nnz_v; i += 32) out.columns[i] = 0;
    }
    if (lane == 0) {
      block_count[row] = out.n_blocks;
      column_count[row] = out.n_columns;
    }
  }
}

}  // namespace cupy_ops
