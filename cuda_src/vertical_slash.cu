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
//    "jump" indices are candidates.
//  * Chain (v2). With unclamped segment ends the test e_k > hi_{k-1} + BLOCK reads, in slash
//    values, S[a] - S[k] > BLOCK * ceil((S[a] - S[k-1]) / BLOCK) + BLOCK: it does not depend on F.
//    Only a tile's first range can have clamped ends (e = BLOCK for slashes within BLOCK of F);
//    every later anchor lies more than 2 * BLOCK left of F. So the thread block links, once per
//    head, each jump to the jump that starts the range after the one it anchors (next[]); a tile
//    finds its first new range by ballot over the candidates (32 per round, usually one round)
//    and then follows the chain. v3: staging also builds lifting tables (the 2, 4, 8, 16-th
//    successor of each jump, by pointer doubling), so lane i of a batch finds its chain node
//    with 5 shared loads, all lanes at once: a batch of 32 ranges costs ~45 instructions
//    instead of ~18 per range in a dependent chain.
//  * Verticals. A vertical is a column iff it lies in a gap before a range ([end of the previous
//    range, lo)); in non-causal mode also when it lies right of the last range (and < kv). The
//    columns of a gap are a contiguous slice of V (two lower bounds).
//  * Blocks of a range [lo, hi): lo, lo + BLOCK, ... below min(hi, kv); none when lo >= kv.
//
// Grid: 1-D, block id = (b * num_heads + h) * row_chunks + chunk; the host sizes row_chunks so
// that the grid is one wave. A thread block serves one (b, h) and the tiles
// r = chunk + i * row_chunks (strided, so that cheap early tiles and costly late causal tiles
// mix); each warp builds one tile at a time. Ranges are emitted 32 at a time, lane i holding
// range i: per-lane binary searches for the column slices, warp scans for the output positions,
// then block offsets written in whole 32-entry chunks of the row (each lane finds the range that
// owns its entry from a 32-bit mask of range starts); the gaps that hold columns are compacted
// to the low lanes and their columns written the same way (most gaps are empty or hold one).
// Staged rows also get a bucket table of V (lower bound per 2^vshift keys, up to 1024
// buckets), so each vertical search covers one bucket (~1 entry at ctx 131072) instead of
// 10 binary steps over NNZ_V 1000.
// Why (v1 -> v2): v1 resolved ranges one at a time (ballot, shuffle, two 32-ary vertical
// searches, a short store; ~1400 cycles of dependent latency per range per warp). At ctx 131072
// with uniform slashes a late tile has ~90 ranges (48 on average), so that serial chain, not
// the bytes, set the time (1167 us for 267 MB); v2 spends ~25 warp instructions per range.
// Why (v2 -> v3): v2 was issue bound (H200 ncu: 206 M warp instructions, IPC 2.94, 320 us);
// following next[] (3.2 M ranges x ~18 instructions) and the 10-step vertical searches were
// ~40% of them.
// Why (v3 -> v3b): v3 made the cases without a range chain 8-14% slower (near-diagonal
// slashes, ctx 32768): every block built the bucket table by 1025 binary searches and the
// lifting tables (4 more barriers) though no tile followed a chain, each tile still ran the
// lifted batch lookup for an empty chain, and the compacted column copy (~17 instructions per
// 32 entries plus ~30 per batch) replaced v2's per-gap loop (~7 per 32) where one gap holds
// hundreds of columns. v3b builds the bucket table in one pass over V, the lifting tables only
// for heads with >= kLiftMinJumps jumps, skips the chain lookup when there is no chain, and
// writes few or long runs (offsets and columns) one run at a time with the whole warp.
// With STAGED the block first copies the head's slash and vertical rows to shared memory and
// lists the jumps and their links there; without it (rows too long for shared memory) it reads
// the rows from global memory, tests every slash index as a possible jump and finds each next
// anchor by ballot.
//
// Template parameters:
//   BLOCK      block_size_M == block_size_N: 32, 64 or 128
//   CAUSAL     true: queries are the last q of the kv keys; false: all keys precede the queries
//   MERGEHEAD  true: per-head valid lengths from vertical_indices_count / slash_indices_count,
//              and only the entries vLLM's mergehead op defines are written (tiles with
//              start < q, entries below the counts). false: the plain op; every entry of the
//              four outputs is written, zeros where no value is defined.
//   STAGED     rows in shared memory: 4 * (2 * nnz_s + nnz_v) bytes of dynamic shared memory
//              (S, V as int32; jumps and next[] as uint16, so nnz_s <= 65535). The lifting
//              tables share next[]'s nnz_s entries (when n_jumps >= kLiftMinJumps and
//              5 * (n_jumps + 1) <= nnz_s) and the bucket table the jump list's unused tail
//              (when >= 33 entries are left, sorted V only); a head without room uses the v2
//              paths (serial chain, full binary searches).
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

constexpr unsigned short kUnknown = 0xFFFF;  // next[j] not resolved while staging
constexpr int kNextScan = 32;                 // candidates a staging thread tests per anchor
constexpr int kLiftLevels = 5;                // successor tables 1, 2, 4, 8, 16: a 32-lane batch
constexpr int kMaxVBuckets = 1024;            // bucket table for vertical searches (2 KB)
// Lifting tables only for heads with at least this many jumps: with fewer, a tile's chain has
// fewer links than that (<= ~16 x 18 instructions to follow serially), about what the tables'
// four extra barriers cost each block; chain-free heads (near-diagonal, ctx 32768) skip them.
constexpr int kLiftMinJumps = 16;

// One (b, h)'s index rows, in shared or global memory, and (STAGED) its jump list and chain.
template <bool STAGED>
struct IndexRows {
  const int* slash;             // S, descending
  const int* vert;              // V, ascending
  const unsigned short* jumps;  // STAGED: ascending k in [1, ns) with S[k-1] - S[k] > BLOCK
  const unsigned short* next;   // STAGED: next[j] = the jump index starting the range after the
                                // one anchored at jumps[j]; n_jumps if none; kUnknown: not staged
  int ns, nv, n_jumps;
  int lift_stride;              // STAGED: > 0 when next[] is followed by kLiftLevels - 1 lifting
                                // tables, table t at next + t * lift_stride holding the 2^t-th
                                // successor (n_jumps maps to itself); 0: no tables
  const unsigned short* vbucket;  // STAGED, n_vbuckets > 0: vbucket[x] = the first i with
                                  // V[i] >= x << vshift (vbucket[0] = 0, vbucket[n_vbuckets] = nv)
  int n_vbuckets, vshift;         // n_vbuckets == 0: no bucket table

  __device__ __forceinline__ long long s(int k) const { return STAGED ? slash[k] : __ldg(slash + k); }
  __device__ __forceinline__ int v32(int i) const { return STAGED ? vert[i] : __ldg(vert + i); }
  __device__ __forceinline__ long long v(int i) const { return v32(i); }
  // Slash index of candidate j. Without a jump list every index 1..ns-1 is a candidate.
  __device__ __forceinline__ int jump(int j) const { return STAGED ? static_cast<int>(jumps[j]) : j + 1; }

  // STAGED with lifting tables: the m-th successor of jump j (m in [0, 32)), one table per bit
  // of m, so a whole batch of 32 chain nodes costs 5 dependent shared loads instead of 31.
  __device__ __forceinline__ int chain_node(int j, int m) const {
#pragma unroll
    for (int t = 0; t < kLiftLevels; ++t) {
      if ((m >> t) & 1) j = next[t * lift_stride + j];
    }
    return j;
  }

  // Candidates j whose slash index lies in (k_after, k_before): [x, y).
  __device__ __forceinline__ int2 jumps_between(int k_after, int k_before) const {
    if (STAGED) {
      const unsigned short* js = jumps;
      const int first = warp_partition_point(0, n_jumps, [&](int j) { return js[j] <= k_after; });
      // Every jump is below ns, so k_before == ns (causal) needs no search.
      return make_int2(first, k_before >= ns ? n_jumps
                                             : warp_partition_point(first, n_jumps, [&](int j) { return js[j] < k_before; }));
    }
    // jump(j) = j + 1 > k_after  <=>  j >= k_after
    return make_int2(k_after, k_before - 1 > k_after ? k_before - 1 : k_after);
  }
};

// Whether the slash with value s_here starts a new range after the range anchored at slash value
// s_anchor, whose last absorbed slash is s_before (spec §4 in slash coordinates: with unclamped
// segment ends e = F - s the test e_here > range_end(e_anchor, e_before) + BLOCK does not depend
// on the tile's frontier F). Holds for every range anchor after a tile's first one (they lie
// more than 2 * BLOCK left of F, so no later segment end is clamped).
template <int BLOCK>
__device__ __forceinline__ bool starts_range(long long s_anchor, long long s_before, long long s_here) {
  const long long d = s_anchor - s_before;
  const long long grow = d > 0 ? (d + BLOCK - 1) / BLOCK * BLOCK : 0;
  return s_anchor - s_here > grow + BLOCK;
}

// The anchor after the one at candidate j (candidates below j_end only): the staged chain, or
// a ballot scan of the following candidates, 32 at a time (rows not staged, or staging gave up).
template <int BLOCK, bool STAGED>
__device__ __forceinline__ int next_anchor(const IndexRows<STAGED>& rows, int j, int j_end) {
  if (STAGED) {
    const int n = rows.next[j];
    if (n != kUnknown) return n < j_end ? n : j_end;
  }
  const long long s_anchor = rows.s(rows.jump(j));
  for (int j0 = j + 1; j0 < j_end; j0 += 32) {
    const int c = j0 + lane_id();
    bool starts = false;
    if (c < j_end) {
      const int k = rows.jump(c);
      starts = starts_range<BLOCK>(s_anchor, rows.s(k - 1), rows.s(k));
    }
    const unsigned hits = __ballot_sync(kFullWarp, starts);
    if (hits) return j0 + __ffs(hits) - 1;
  }
  return j_end;
}

__device__ __forceinline__ unsigned warp_or(unsigned x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return __reduce_or_sync(kFullWarp, x);
#else
  for (int d = 16; d > 0; d >>= 1) x |= __shfl_xor_sync(kFullWarp, x, d);
  return x;
#endif
}

__device__ __forceinline__ int warp_exclusive_sum(int x, int& total) {
  const int lane = lane_id();
  int inc = x;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int t = __shfl_up_sync(kFullWarp, inc, d);
    if (lane >= d) inc += t;
  }
  total = __shfl_sync(kFullWarp, inc, 31);
  return inc - x;
}

__device__ __forceinline__ int warp_inclusive_max(int x) {
  const int lane = lane_id();
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int t = __shfl_up_sync(kFullWarp, x, d);
    if (lane >= d && t > x) x = t;
  }
  return x;
}

// 1 << d, or 0 for d >= 32 (PTX shl clamps the shift; C++ << would be undefined there).
__device__ __forceinline__ unsigned bit_or_zero(unsigned d) {
  unsigned r;
  asm("shl.b32 %0, %1, %2;" : "=r"(r) : "r"(1u), "r"(d));
  return r;
}

// Index of the c-th (0-based) set bit of mask, for c < popc(mask); some bit index in [0, 31]
// otherwise. Binary search on prefix popcounts: five steps, no loop.
__device__ __forceinline__ int nth_set_bit(unsigned mask, int c) {
  int at = 0;
#pragma unroll
  for (int step = 16; step > 0; step >>= 1) {
    if (__popc(mask & ((1u << (at + step)) - 1u)) <= c) at += step;
  }
  return at;
}

// One run [pos, pos + n) written by the whole warp (pos, n, key warp-uniform), entry p =
// emit(key, p): ~7 instructions per 32 entries. For long runs (v2's column copy).
template <typename Emit>
__device__ __forceinline__ void write_run(int* dst, int pos, int n, int key, Emit emit) {
  for (int p = pos + lane_id(); p < pos + n; p += 32) dst[p] = emit(key, p);
}

// Writes a warp's list of `total` entries, dst[0..total), 32 at a time. Lanes [0, m) hold
// non-empty runs [pos, pos + n) that tile [0, total) in lane order; lanes >= m hold n == 0.
// Entry p gets emit(key of its run, p). The run owning an entry is found from a 32-bit mask of
// the run starts inside the current 32 entries (one OR reduction) and a running count.
// (~17 instructions per 32 entries: this loop writes every block offset.)
template <typename Emit>
__device__ __forceinline__ void write_runs(int* dst, int pos, int n, int key, int total, Emit emit) {
  const int lane = lane_id();
  const unsigned le_mask = (2u << lane) - 1u;
  // An empty run starts nowhere: from 2^32 - 1, no chunk start p0 < 2^31 is within 32.
  const unsigned start = n > 0 ? static_cast<unsigned>(pos) : 0xFFFFFFFFu;
  int started = 0;
  for (int p0 = 0; p0 < total; p0 += 32) {
    const unsigned starts = warp_or(bit_or_zero(start - static_cast<unsigned>(p0)));
    const int owner = started + __popc(starts & le_mask) - 1;   // in [0, 31] (run 0 starts at 0)
    const int owner_key = __shfl_sync(kFullWarp, key, owner);
    const int p = p0 + lane;
    if (p < total) dst[p] = emit(owner_key, p);
    started += __popc(starts);
  }
}

// With a bucket table: the first i in [vbucket[x], vbucket[x + 1]) with V[i] >= key (that slice
// holds the answer for sorted V: x is key's bucket, clamped to [0, n_vbuckets)). Per-lane
// binary search; in [0, nv] for any table contents.
template <bool STAGED>
__device__ __forceinline__ int bucket_lower_bound(const IndexRows<STAGED>& rows, long long key) {
  const long long x64 = key >> rows.vshift;
  const int x = x64 < 0 ? 0 : (x64 >= rows.n_vbuckets ? rows.n_vbuckets - 1 : static_cast<int>(x64));
  const int first = rows.vbucket[x], last = rows.vbucket[x + 1];
  int a = first < rows.nv ? first : rows.nv;
  int n = (last < rows.nv ? last : rows.nv) - a;
  while (n > 0) {
    const int half = n >> 1;
    if (rows.v(a + half) < key) {
      a += half + 1;
      n -= half + 1;
    } else {
      n = half;
    }
  }
  return a;
}

// Per lane: the first i with V[i] >= lo and the first with V[i] >= hi (sorted V; in [0, nv] for
// any V). Staged rows with a bucket table: searches inside one bucket (about nv * 2^vshift / kv
// entries, ~1 at ctx 131072 NNZ_V 1000). Otherwise branch-free binary searches with a
// warp-uniform trip count, interleaved for ILP.
template <bool STAGED>
__device__ __forceinline__ void lower_bounds(const IndexRows<STAGED>& rows, long long lo, long long hi,
                                             int& at_lo, int& at_hi) {
  if (STAGED && rows.n_vbuckets > 0) {
    at_lo = bucket_lower_bound(rows, lo);
    at_hi = bucket_lower_bound(rows, hi);
    return;
  }
  constexpr long long kMax = 2147483647LL, kMin = -2147483647LL - 1;
  const int key_lo = static_cast<int>(lo > kMax ? kMax : (lo < kMin ? kMin : lo));
  const int key_hi = static_cast<int>(hi > kMax ? kMax : (hi < kMin ? kMin : hi));
  int a = 0, b = 0, n = rows.nv;
  while (n > 1) {
    const int half = n >> 1;
    a = rows.v32(a + half) < key_lo ? a + half : a;
    b = rows.v32(b + half) < key_hi ? b + half : b;
    n -= half;
  }
  at_lo = lo > kMax ? rows.nv : a + (rows.v32(a) < key_lo ? 1 : 0);
  at_hi = hi > kMax ? rows.nv : b + (rows.v32(b) < key_hi ? 1 : 0);
}

// Writes one tile's layout: batches of up to 32 ranges arrive left to right, lane i holding
// range i, each with the columns of the gap before it. Counts are warp-uniform.
template <int BLOCK, bool STAGED>
struct TileWriter {
  int* offsets;          // the tile's block_offset row (capacity cap_s)
  int* columns;          // the tile's column_index row (capacity cap_v)
  int cap_s, cap_v;
  long long kv;
  int n_blocks, n_columns;
  int v_next;            // first vertical at or right of the previous range's end

  // Lanes [0, count) hold ranges [lo, hi), ascending. Serially this is, per range: columns =
  // V[v_next, max(v_next, lb(lo))), v_next = max(that end, lb(hi)); blocks lo, lo + BLOCK, ...
  // below min(hi, kv), none when lo >= kv; both capped by the row capacity.
  __device__ __forceinline__ void ranges(const IndexRows<STAGED>& rows, long long lo, long long hi,
                                         int count) {
    const int lane = lane_id();
    const bool valid = lane < count;
    int at_lo, at_hi;
    lower_bounds(rows, lo, hi, at_lo, at_hi);
    if (!valid) at_lo = at_hi = 0;
    // Columns: v_next after range i is the running max of v_next and every lb up to range i.
    const int at_range = at_lo > at_hi ? at_lo : at_hi;
    const int after = warp_inclusive_max(at_range > v_next ? at_range : v_next);
    int before = __shfl_up_sync(kFullWarp, after, 1);
    if (lane == 0) before = v_next;
    const int gap = valid && at_lo > before ? at_lo - before : 0;
    int n_gap_total;
    const int col_pos = warp_exclusive_sum(gap, n_gap_total);
    const int col_room = cap_v - n_columns - col_pos;
    const int n_cols = gap < col_room ? gap : (col_room > 0 ? col_room : 0);
    const int col_room0 = cap_v - n_columns;
    const int n_cols_total = n_gap_total < col_room0 ? n_gap_total : col_room0;
    const unsigned with_cols = __ballot_sync(kFullWarp, n_cols > 0);
    const int n_runs = __popc(with_cols);
    auto emit_column = [&](int k, int p) { return rows.v32(k + p); };
    if (n_runs <= 2 || n_runs * 32 <= n_cols_total) {
      // Few or long gaps (near-diagonal slashes: one gap holding most verticals): copy gap by
      // gap with the whole warp (v2's loop; the compaction below would cost ~17 instead of ~7
      // instructions per 32 columns). The mask is warp-uniform, so every lane shuffles.
      for (unsigned m = with_cols; m; m &= m - 1) {
        const int i = __ffs(m) - 1;
        const int run_pos = __shfl_sync(kFullWarp, col_pos, i);
        const int run_n = __shfl_sync(kFullWarp, n_cols, i);
        const int run_key = __shfl_sync(kFullWarp, before, i) - run_pos;
        write_run(columns + n_columns, run_pos, run_n, run_key, emit_column);
      }
    } else {
      // Many short gaps (ctx 131072 uniform: ~3.5 per batch, ~1 column each): compact the runs (lane c takes the c-th gap with columns), then
      // copy all columns of the batch 32 entries at a time. Entry p of run c is V[before_c +
      // p - col_pos_c]; the run's key is before_c - col_pos_c. Every lane shuffles (full-mask
      // shuffles must be executed by the whole warp: one inside `lane < popc ? ... : 0` left the
      // warp diverged, and write_runs' shuffles then read a lane that was not there, i.e. an
      // undefined key and an out-of-bounds V index), and lanes past the runs drop the value.
      const int src = nth_set_bit(with_cols, lane);
      const int n_at_src = __shfl_sync(kFullWarp, n_cols, src);
      const int run_n = lane < __popc(with_cols) ? n_at_src : 0;
      const int run_pos = __shfl_sync(kFullWarp, col_pos, src);
      const int run_key = __shfl_sync(kFullWarp, before, src) - run_pos;
      write_runs(columns + n_columns, run_pos, run_n, run_key, n_cols_total, emit_column);
    }
    n_columns += n_cols_total;
    v_next = __shfl_sync(kFullWarp, after, 31);

    // Blocks. For valid input lo ascends, so the ranges that emit nothing (lo >= kv, or the row
    // is full) come last; anything else is cut there too, so that the emitting ranges are a prefix.
    const long long top = hi < kv ? hi : kv;
    const long long nb64 = valid && lo < kv && top > lo ? (top - lo + BLOCK - 1) / BLOCK : 0;  // < 2^26
    int nb = static_cast<int>(nb64);
    int n_total;
    const int pos = warp_exclusive_sum(nb, n_total);  // <= 32 * 2^26: fits unsigned, see below
    const unsigned room = static_cast<unsigned>(cap_s - n_blocks);
    const unsigned upos = static_cast<unsigned>(pos);
    nb = upos >= room ? 0 : static_cast<int>(static_cast<unsigned>(nb) < room - upos ? static_cast<unsigned>(nb) : room - upos);
    const unsigned empty = __ballot_sync(kFullWarp, nb == 0);   // lanes >= count included
    const int emitting = empty ? __ffs(empty) - 1 : 32;         // lanes [0, emitting) emit
    if (lane >= emitting) nb = 0;
    const int total_at_last = __shfl_sync(kFullWarp, pos + nb, emitting > 0 ? emitting - 1 : 0);
    const int total = emitting > 0 ? total_at_last : 0;
    // Entry p (batch-relative) of the range starting at entry P with offset lo is
    // lo + (p - P) * BLOCK = base + p * BLOCK, computed mod 2^32 (the result fits).
    const unsigned base = static_cast<unsigned>(lo) - static_cast<unsigned>(pos) * BLOCK;
    auto emit_block = [](int b, int p) {
      return static_cast<int>(static_cast<unsigned>(b) + static_cast<unsigned>(p) * BLOCK);
    };
    if (emitting <= 2 || emitting * 32 <= total) {
      // Few or long runs (tiles without a chain: one range, up to n_rows offsets): one run at
      // a time costs ~10 instructions per run + ~7 per 32 entries, the chunk loop ~17 per 32.
      for (int c = 0; c < emitting; ++c) {   // warp-uniform trip count: every lane shuffles
        const int run_pos = __shfl_sync(kFullWarp, pos, c);
        const int run_n = __shfl_sync(kFullWarp, nb, c);
        const int run_base = __shfl_sync(kFullWarp, static_cast<int>(base), c);
        write_run(offsets + n_blocks, run_pos, run_n, run_base, emit_block);
      }
    } else {
      write_runs(offsets + n_blocks, pos, nb, static_cast<int>(base), total, emit_block);
    }
    n_blocks += total;
  }

  // Non-causal: verticals right of the last range that are keys (< kv) are columns too.
  __device__ __forceinline__ void tail(const IndexRows<STAGED>& rows) {
    const long long limit = kv;
    const int end = warp_partition_point(v_next, rows.nv, [&](int i) { return rows.v(i) < limit; });
    const int room = cap_v - n_columns;
    const int count = end - v_next < room ? end - v_next : room;
    for (int i = lane_id(); i < count; i += 32) columns[n_columns + i] = rows.v32(v_next + i);
    n_columns += count;
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
    out.ranges(rows, lo, lo + BLOCK, 1);
  } else {
    const long long anchor = seg_end(k0);
    // Non-causal: slashes below start would give segments at or past kv; the scan stops there.
    const int k_end = CAUSAL ? rows.ns
                             : warp_partition_point(k0 + 1, rows.ns, [&](int k) { return rows.s(k) >= start; });
    const int2 cands = rows.jumps_between(k0, k_end);
    // The first range (its segment ends may be clamped at BLOCK): its end is decided by the first
    // candidate that starts a new range, found 32 candidates per ballot.
    int hit = cands.y;
    long long hi0 = 0;
    for (int j0 = cands.x; j0 < cands.y; j0 += 32) {
      const int j = j0 + lane;
      bool starts = false;
      long long end_before = 0;
      if (j < cands.y) {
        const int k = rows.jump(j);
        end_before = range_end<BLOCK>(anchor, seg_end(k - 1));
        starts = seg_end(k) > end_before + BLOCK;
      }
      const unsigned hits = __ballot_sync(kFullWarp, starts);
      if (hits) {
        const int f = __ffs(hits) - 1;
        hit = j0 + f;
        hi0 = __shfl_sync(kFullWarp, end_before, f);
        break;
      }
    }
    if (hit == cands.y) hi0 = range_end<BLOCK>(anchor, seg_end(k_end - 1));
    // Later ranges follow the chain of anchors (frontier independent, see starts_range); lane i
    // of a batch takes range i. Lane 0 of the first batch holds the first range.
    long long lo = anchor - BLOCK, hi = hi0;
    int count = 1, first_chain = 1, j = hit, my_j = 0;
    for (;;) {
      if (j >= cands.y) {
        // No chain (tiles with one range: near-diagonal slashes, ctx 32768): lane 0's first
        // range only, no lookups, shuffles or per-lane range setup.
      } else if (STAGED && rows.lift_stride > 0) {
        // Lanes [first_chain, 32) take the chain nodes j, next(j), ... at once (the chain
        // ascends, so the nodes below cands.y are a prefix); j moves past the batch.
        my_j = rows.chain_node(j, lane >= first_chain ? lane - first_chain : 0);
        count = first_chain + __popc(__ballot_sync(kFullWarp, lane >= first_chain && my_j < cands.y));
        const int after = rows.next[__shfl_sync(kFullWarp, my_j, count - 1)];
        j = count == 32 && after < cands.y ? after : cands.y;
      } else {
        for (; count < 32 && j < cands.y; ++count) {
          if (lane == count) my_j = j;
          j = next_anchor<BLOCK, STAGED>(rows, j, cands.y);
        }
      }
      if (count > first_chain) {   // warp-uniform
        const int j_after = __shfl_down_sync(kFullWarp, my_j, 1);
        if (lane >= first_chain && lane < count) {
          const int k = rows.jump(my_j);
          const int next = lane + 1 < count ? j_after : j;
          const int k_next = next < cands.y ? rows.jump(next) : k_end;
          const long long a = seg_end(k);
          lo = a - BLOCK;
          hi = range_end<BLOCK>(a, seg_end(k_next - 1));
        }
      }
      out.ranges(rows, lo, hi, count);
      if (j >= cands.y) break;
      count = 0;
      first_chain = 0;
    }
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

// Copies the rows to shared memory, lists the jump indices (ascending) and links each jump to
// the jump that starts the range after the one it anchors (the chain). Every thread of the
// block calls it. Each warp compacts one contiguous slice of 1..ns-1; slices are concatenated
// in order through per-warp totals. Each thread then links its jumps by testing up to
// kNextScan following candidates (a new range usually starts within a few); a link it cannot
// resolve is kUnknown and the tiles that reach it scan for it by ballot (bounded work for any
// input). When every link is resolved, the head has >= kLiftMinJumps jumps and the tables fit
// in next[]'s nnz_s entries (5 * (n_jumps + 1) <= nnz_s), it also builds the lifting tables by pointer doubling (next of next).
// In the jump list's unused tail (nnz_s - n_jumps entries) it puts the vertical bucket table,
// the largest power of two of buckets up to kMaxVBuckets that fits (none below 32).
// Returns (n_jumps, lift stride or 0, buckets or 0, bucket shift). Needs ns <= nnz_s <= 65535
// and nv <= 65535 (16-bit indices; the host stages only rows that short).
template <int BLOCK, int THREADS>
__device__ int4 stage_rows(int* s_slash, int* s_vert, unsigned short* s_jumps, unsigned short* s_next,
                           const int* slash_row, const int* vert_row, int ns, int nv, int nnz_s) {
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
    if (hit) s_jumps[pos + lanes_below(hits)] = static_cast<unsigned short>(k);
    pos += __popc(hits);
  }
  // Bucket x covers keys [x << vshift, (x + 1) << vshift); the shift puts V's largest value in
  // the last bucket or below. Entry x is the lower bound of V for the bucket's first key.
  int n_buckets = kMaxVBuckets;
  while (n_buckets >= 32 && n_buckets + 1 > nnz_s - total) n_buckets >>= 1;
  if (n_buckets < 32 || nv > 65535) n_buckets = 0;
  int vshift = 0;
  bool v_unsorted = false;
  if (n_buckets > 0) {
    const int v_max = s_vert[nv - 1];
    while (vshift < 31 && (v_max >> vshift) >= n_buckets) ++vshift;
    unsigned short* vbucket = s_jumps + total;
    // One pass over V (v3 ran 1025 binary searches here, ~40 dependent shared loads per thread
    // at the start of every block): with c(i) = V[i]'s bucket clamped to [0, n_buckets - 1],
    // c(-1) = 0 and c(nv) = n_buckets - 1, vertical i is the lower bound of the buckets x in
    // (c(i-1), c(i)]. For sorted V these intervals tile [1, n_buckets - 1] (each entry written
    // once); unsorted V (invalid input) is detected and gets no table.
    auto bucket_of = [&](int i) {
      if (i >= nv) return n_buckets - 1;
      const int c = s_vert[i] >> vshift;
      return c < 0 ? 0 : (c >= n_buckets ? n_buckets - 1 : c);
    };
    for (int i = threadIdx.x; i <= nv; i += THREADS) {
      const int c_prev = i > 0 ? bucket_of(i - 1) : 0;
      const int c_here = bucket_of(i);
      if (i > 0 && i < nv && s_vert[i - 1] > s_vert[i]) v_unsorted = true;
      for (int x = c_prev + 1; x <= c_here; ++x) vbucket[x] = static_cast<unsigned short>(i);
    }
    // The ends are fixed so that any key's answer lies inside its clamped bucket.
    if (threadIdx.x == 0) {
      vbucket[0] = 0;
      vbucket[n_buckets] = static_cast<unsigned short>(nv);
    }
  }
  if (__syncthreads_or(v_unsorted)) n_buckets = 0;   // block-uniform
  bool unknown = false;
  for (int j = threadIdx.x; j < total; j += THREADS) {
    const long long s_anchor = s_slash[s_jumps[j]];
    const int stop = j + 1 + kNextScan < total ? j + 1 + kNextScan : total;
    int next = stop < total ? kUnknown : total;
    for (int c = j + 1; c < stop; ++c) {
      const int k = s_jumps[c];
      if (starts_range<BLOCK>(s_anchor, s_slash[k - 1], s_slash[k])) {
        next = c;
        break;
      }
    }
    unknown |= next == kUnknown;
    s_next[j] = static_cast<unsigned short>(next);
  }
  // The end of the chain maps to itself (total < ns <= nnz_s: in bounds), so that lifting
  // past it stays there.
  if (threadIdx.x == 0) s_next[total] = static_cast<unsigned short>(total);
  const int stride = total + 1;
  const bool any_unknown = __syncthreads_or(unknown);   // every thread: also the barrier for next[]
  const bool lift = !any_unknown && total >= kLiftMinJumps && kLiftLevels * stride <= nnz_s;  // block-uniform
  if (lift) {
    for (int t = 1; t < kLiftLevels; ++t) {
      const unsigned short* half = s_next + (t - 1) * stride;   // 2^(t-1)-th successors, in [0, total]
      unsigned short* full = s_next + t * stride;
      for (int j = threadIdx.x; j < stride; j += THREADS) full[j] = half[half[j]];
      __syncthreads();
    }
  }
  return make_int4(total, lift ? stride : 0, n_buckets, vshift);
}

__device__ __forceinline__ int clamp_count(int count, int cap) {
  return count < 1 ? 1 : (count > cap ? cap : count);
}

// p[from, to) = 0 by one warp: 16-byte stores between a 4-byte head and tail. The plain op's
// zero tails are almost all of its bytes (ctx 32768, NNZ_S 6000: 459 MB, ~90% zeros), and 4-byte
// stores reached ~80% of the copy ceiling (docs/perf.md, vertical-slash, eleventh session).
__device__ __forceinline__ void zero_fill(int* p, int from, int to, int lane) {
  if (from >= to) return;
  int* q = p + from;
  int n = to - from;
  const int head = min(n, static_cast<int>((16u - (reinterpret_cast<unsigned long long>(q) & 15u)) / 4u & 3u));
  if (lane < head) q[lane] = 0;
  q += head;
  n -= head;
  int4* v = reinterpret_cast<int4*>(q);  // 16-byte aligned now
  const int nv = n >> 2;
  for (int i = lane; i < nv; i += 32) v[i] = make_int4(0, 0, 0, 0);
  if (lane < (n & 3)) q[(nv << 2) + lane] = 0;
}

}  // namespace vertical_slash

template <int BLOCK, bool CAUSAL, bool MERGEHEAD, bool STAGED, int THREADS>
__global__ void __launch_bounds__(THREADS, 1024 / THREADS) vertical_slash_kernel(
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
    unsigned short* s_jumps = reinterpret_cast<unsigned short*>(s_vert + nnz_v);
    unsigned short* s_next = s_jumps + nnz_s;
    rows.slash = s_slash;
    rows.vert = s_vert;
    rows.jumps = s_jumps;
    rows.next = s_next;
    const int4 staged = chunk < tiles ? stage_rows<BLOCK, THREADS>(s_slash, s_vert, s_jumps, s_next, slash_row,
                                                                   vert_row, rows.ns, rows.nv, nnz_s)
                                      : make_int4(0, 0, 0, 0);  // block-uniform: only zero rows to write
    rows.n_jumps = staged.x;
    rows.lift_stride = staged.y;
    rows.vbucket = s_jumps + staged.x;
    rows.n_vbuckets = staged.z;
    rows.vshift = staged.w;
  } else {
    rows.slash = slash_row;
    rows.vert = vert_row;
    rows.jumps = nullptr;
    rows.next = nullptr;
    rows.n_jumps = 0;
    rows.lift_stride = 0;
    rows.vbucket = nullptr;
    rows.n_vbuckets = 0;
    rows.vshift = 0;
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
      zero_fill(out.offsets, out.n_blocks, nnz_s, lane);
      zero_fill(out.columns, out.n_columns, nnz_v, lane);
    }
    if (lane == 0) {
      block_count[row] = out.n_blocks;
      column_count[row] = out.n_columns;
    }
  }
}

}  // namespace cupy_ops
