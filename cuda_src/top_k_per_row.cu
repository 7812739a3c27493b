// top_k_per_row_prefill / top_k_per_row_decode: the top_k largest scores of each row's candidate
// range [s, e), as column indices relative to s (spec top_k_per_row.md §2).
//
// One cluster of C CTAs per row (C = 1 for many rows; 2..8 when few long rows would leave SMs
// idle). Each CTA owns a contiguous slice of the row. The answer is a threshold: every key above
// T is selected, plus the first `take` keys equal to T in position order. T is found by radix
// selection on 32-bit order keys:
//
//   pass 0   each warp reads its segment of the slice once, 16 bytes per lane per load with
//            the next batch in flight, straight into registers: order keys, a 12-bit coarse
//            histogram, and the 16-bit key prefix (key >> 16) kept in shared memory (as much
//            as fits; the rest is re-read from L2 later, the same share in every warp). Two
//            bytes per score let a 64K-element slice stay on chip. Decode rows (which start at
//            column 0) are laid out for logits.shape[1], so the first loads go out before
//            seq_lens arrives. The threshold bin is where the K-th largest key falls (with
//            C > 1, of the cluster's summed histograms: find_bin_cluster reads group sums,
//            then one group's bins, through distributed shared memory); a bin is a range of
//            key >> 17, so prefixes alone say above / inside / below.
//   gather   one sweep over the prefixes: each warp counts its keys above the threshold bin,
//            appends the keys inside it (usually tens to a few hundred, full keys re-read from
//            L2) with their element numbers to a candidate list, and notes per 32-element step
//            which lanes are above / inside the bin (two masks, where shared memory has room);
//            with C > 1 every CTA then pulls all CTAs' lists.
//   refine   8-bit radix passes over the candidate list, by one warp for short lists (no block
//            barriers), until the threshold is exact or a bin is taken whole; the candidates
//            then complete each warp's counts of keys above / equal to the threshold without
//            another sweep. If the bin held more than CAND_CAP keys (heavy ties, very narrow
//            distributions) 12-bit passes run over the whole slices with cluster-summed
//            histograms instead, and a counting sweep follows: slower, same answer.
//   output   warp and CTA offsets from those counts (exchanged across the cluster); the listed
//            candidates that are selected join the "above" masks (ties: each warp's lowest
//            columns); then each lane takes one 32-element step, a warp scan of the masks'
//            counts gives its slots, and it writes its set bits: no key is looked at again.
//            Without masks (bin overflow, or slices too long for them) the write sweep
//            compares every key again, in column order.
//
// Short slices (<= SHORT_CAP scores per CTA: prefill rows, small decode batches) keep every full
// key in shared memory instead of its prefix, where the host sized the cache for that: the
// gather compares full keys with the bin's bounds and lists candidates without an L2 round
// trip, and the write compares keys read from shared memory (no masks). These rows are latency
// bound: a few dependent phases, one CTA per SM at 128 x 8192, code fetched cold.
//
// The ordered sweeps give each warp one contiguous segment of the slice, walked 32 elements at a
// time, so column order is (CTA, warp, step, lane). The phases are short and latency bound (a
// few dependent shared-memory and vote steps per element at ~16 warps per SM); docs/perf.md has
// the measured history, including the designs that did not pay (register-resident keys).
//
// The output is deterministic: the selected set (ties at T broken by lowest column) and its
// order (ascending column) do not depend on timing; only histogram counts use atomics.
//
// Order keys: flip all bits of negative floats, only the sign bit of the others, so a larger
// key is a larger score, -inf is the lowest number and +0 ranks just above -0. NaN maps to key 0,
// below -inf (the project's rule, reference/top_k_per_row.py). fp16/bf16 scores are widened to
// fp32 exactly first.
//
// Coarse digit (pass 0): sign, then 5 exponent bits and 6 mantissa bits of |x| for 2^-15 <=
// |x| < 2^17, clamped outside: 64 bins per octave where scores live, so the threshold bin is
// narrow for real score distributions (a plain 12-bit key prefix has 8 per octave). It is
// monotone in the key, so a bin is a key interval.
//
// Reading never leaves [s, e) of the row; s and e are clamped to what `logits` holds, so bad
// row ranges cannot read out of bounds. Writes stay in out[row, 0:top_k].
#include "common/cluster.cuh"
#include "common/dtypes.cuh"

namespace cupy_ops {
namespace topk {

using u32 = unsigned int;

// Phase timestamps of CTA 0 (lane 0 of the first and of the last warp), printed at exit: a
// profiling aid for tools/exp_top_k.py, compiled in only with -DCUPY_OPS_TOPK_TIMING. With
// CUPY_OPS_TOPK_CTA_TIMES too, thread 0 of every CTA keeps them (printed with its CTA times).
#if defined(CUPY_OPS_TOPK_TIMING) && defined(CUPY_OPS_TOPK_CTA_TIMES)
#define TOPK_MARK(i) if (threadIdx.x == 0) marks[i] = clock64()
#elif defined(CUPY_OPS_TOPK_TIMING)
#define TOPK_MARK(i) if (blockIdx.x == 0 && (threadIdx.x == 0 || threadIdx.x == blockDim.x - 32)) marks[i] = clock64()
#else
#define TOPK_MARK(i)
#endif
// Every CTA's start and end (%globaltimer, ns, comparable across SMs) and its length in its SM's
// cycles, printed at exit: how far the grid's CTAs start apart and which one ends last, for
// tools/exp_top_k.py --define CUPY_OPS_TOPK_CTA_TIMES (a profiling aid, never in a shipped build).
#ifdef CUPY_OPS_TOPK_CTA_TIMES
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
#endif

constexpr int BINS = 4096;       // 12-bit digits
constexpr int CAND_CAP = 4096;   // candidate keys refined inside one CTA
constexpr int LIST_BITS = 8;     // radix digit for candidate lists (few keys: small histograms)
constexpr u32 WARP_REFINE_MAX = 1024;  // candidate lists up to this long are refined by one warp
constexpr int GROUP = 4;         // elements per load: 16 bytes of fp32, 8 bytes of fp16/bf16
constexpr int SHORT_CAP = 8192;  // slices up to this long keep full keys on chip (the host sizes the room)
#ifndef CUPY_OPS_TOPK_SHORT_PATH
#define CUPY_OPS_TOPK_SHORT_PATH 1  // experiments compare with 0 (tools/exp_top_k.py --define)
#endif
// Pass 0's groups per lane and batch (U): the next batch's loads go out before this one is
// converted and counted. U = 2 (H200, session 8: 64x131072 41.0 -> 37.8 us; U = 4 with the same
// prefetch spilled 36-64 bytes at 64 registers and gained less; U = 4 without prefetch left a lane
// with nothing in flight while it worked; U = 3 at 1024 threads, session 9: 36.0 vs 35.1 us).
// CUPY_OPS_TOPK_PASS0_U overrides U for experiments (tools/exp_top_k.py --define CUPY_OPS_TOPK_PASS0_U=3).
#ifndef CUPY_OPS_TOPK_PASS0_U
#define CUPY_OPS_TOPK_PASS0_U 2
#endif
constexpr int PASS0_U = CUPY_OPS_TOPK_PASS0_U;
// Steps of 32 keys a short slice's gather and write load before working on them (sweep_segment's
// U): the keys of a batch come from shared memory in one round trip. Experiments override it
// (tools/exp_top_k.py --define CUPY_OPS_TOPK_SHORT_U=8); 8 measured no faster (docs/perf.md,
// top-k, eleventh session).
#ifndef CUPY_OPS_TOPK_SHORT_U
#define CUPY_OPS_TOPK_SHORT_U 4
#endif
constexpr int SHORT_U = CUPY_OPS_TOPK_SHORT_U;

constexpr int MODE_PREFILL = 0;    // s = row_a[r], e = row_b[r]
constexpr int MODE_DECODE = 1;     // s = 0, e = seq_lens[r / next_n] - next_n + r % next_n + 1
constexpr int MODE_DECODE_2D = 2;  // s = 0, e = seq_lens[r / next_n, r % next_n]

__device__ __forceinline__ u32 order_key(float x) {
  const u32 b = __float_as_uint(x);
  if (isnan(x)) return 0u;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Coarse bin of a key; bins 0..2047 hold negative scores, 2048..4095 non-negative ones.
// Keys >> 17 keep sign, exponent and 6 mantissa bits; the window is exponents 112..143.
constexpr u32 NEG_BASE = 7168;    // (key >> 17) of the most negative in-window score
constexpr u32 POS_BASE = 23552;   // (key >> 17) of the smallest in-window positive score
__device__ __forceinline__ u32 coarse_bin(u32 key) {
  const int top = static_cast<int>(key >> 17);
  if (key & 0x80000000u) return 2048u + static_cast<u32>(min(max(top - int(POS_BASE), 0), 2047));
  return static_cast<u32>(min(max(top - int(NEG_BASE), 0), 2047));
}
// Smallest key of coarse bin b (b in 0..4096; 4096 gives 2^32).
__device__ __forceinline__ unsigned long long coarse_bin_first_key(u32 b) {
  if (b == 0) return 0ull;
  if (b < 2048) return static_cast<unsigned long long>(b + NEG_BASE) << 17;
  if (b == 2048) return 0x80000000ull;
  if (b < 4096) return static_cast<unsigned long long>(b - 2048 + POS_BASE) << 17;
  return 1ull << 32;
}

template <typename V>
__device__ __forceinline__ V warp_inclusive_sum(V v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const V n = __shfl_up_sync(0xffffffffu, v, d);
    if (lane >= d) v += n;
  }
  return v;
}

struct BinChoice {
  u32 bin;     // threshold bin: the one holding the need-th largest key
  u32 above;   // keys in bins above it
  u32 count;   // keys in it
};

// The bin of the need-th largest key of the NB-bin histogram H (counted from the top bin); the
// result is in *out for every thread after the call. If H holds fewer than `need` keys (only if
// the data changed under us) the lowest bin is returned, so callers still terminate.
// Small histograms are searched by warp 0 alone; large ones by the block (one barrier).
template <int THREADS, int NB>
__device__ void find_bin(const u32* H, u32 need, u32* buf, BinChoice* out) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  constexpr bool ONE_WARP = NB <= 32 * 16;
  constexpr int OWNERS = ONE_WARP ? 32 : THREADS;
  constexpr int PER = NB / OWNERS;
  static_assert(NB % OWNERS == 0 && PER >= 1, "bins split evenly");
  if (!ONE_WARP || warp == 0) {
    const int top = NB - tid * PER;  // this thread: bins [top-PER, top), top bins first
    u32 h[PER];
    u32 local = 0;
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      h[i] = H[top - 1 - i];
      local += h[i];
    }
    const u32 incl = warp_inclusive_sum(local);
    u32 above = incl - local, total = __shfl_sync(0xffffffffu, incl, 31);
    if constexpr (!ONE_WARP) {
      constexpr int NW = THREADS / 32;
      if (lane == 31) buf[warp] = incl;
      __syncthreads();
      u32 before = 0;
      total = 0;
#pragma unroll
      for (int w = 0; w < NW; ++w) {
        const u32 t = buf[w];
        before += w < warp ? t : 0u;
        total += t;
      }
      above += before;
    }
    if (above < need && need <= above + local) {
#pragma unroll
      for (int i = 0; i < PER; ++i) {
        if (above + h[i] >= need) {
          *out = BinChoice{static_cast<u32>(top - 1 - i), above, h[i]};
          break;
        }
        above += h[i];
      }
    }
    if (tid == 0 && total < need) *out = BinChoice{0u, 0u, H[0]};
  }
  __syncthreads();
}

// Warp step of find_bin_cluster: lane l holds the counts a, b of entries top - 2l and top - 2l - 1
// (the top first). Returns, on every lane, the entry where the running count from the top
// reaches `need`, the count above it and its own count; if the counts hold fewer than `need`
// (only if the data changed under us) entry 0 with nothing above it, as find_bin does.
__device__ __forceinline__ BinChoice pick_from_top(u32 a, u32 b, int top, u32 need) {
  const int lane = threadIdx.x & 31;
  const u32 incl = warp_inclusive_sum(a + b);
  const u32 excl = incl - a - b;
  const u32 owner = __ballot_sync(0xffffffffu, excl < need && need <= incl);
  const int src = owner ? __ffs(owner) - 1 : 31;
  const bool first = excl + a >= need;
  BinChoice c{static_cast<u32>(top - 2 * lane - (first ? 0 : 1)), first ? excl : excl + a, first ? a : b};
  if (!owner) c = BinChoice{0u, 0u, b};  // lane 31's b is entry 0
  return BinChoice{__shfl_sync(0xffffffffu, c.bin, src), __shfl_sync(0xffffffffu, c.above, src),
                   __shfl_sync(0xffffffffu, c.count, src)};
}

// find_bin of the cluster-summed 12-bit histogram without summing all of it (C > 1): each CTA
// adds its bins up in 64 groups of 64; warp 0 of every CTA reads the C CTAs' group sums, picks
// the group holding the need-th largest key, then reads only that group's 64 bins from each
// CTA. Why: summing all 4096 bins into every CTA (8 remote loads and 8 remote stores per
// thread at C8) and a block-wide search took ~5.4K cycles at 1 x 32768 (H200, session 9).
// Entered after a CTA barrier with the local histogram complete; leaves after a cluster
// barrier (no CTA changes its histogram while another may still read it), with *out set.
template <int C, int THREADS>
__device__ void find_bin_cluster(const u32* hist, u32* groups, u32 need, BinChoice* out) {
  constexpr int GROUPS = 64, PER = BINS / THREADS, LANES = BINS / GROUPS / PER;  // threads per group
  static_assert(BINS == GROUPS * GROUPS && PER >= 1 && LANES >= 1 && 32 % LANES == 0, "groups inside warps");
  const int tid = threadIdx.x, lane = tid & 31;
  u32 s = 0;
#pragma unroll
  for (int i = 0; i < PER; ++i) s += hist[tid * PER + i];
#pragma unroll
  for (int d = LANES / 2; d >= 1; d >>= 1) s += __shfl_xor_sync(0xffffffffu, s, d);
  if (lane % LANES == 0) groups[tid / LANES] = s;
  cluster::sync();  // every CTA's group sums and histogram complete
  if (tid < 32) {
    const int top = GROUPS - 1 - 2 * lane;
    u32 a = 0, b = 0;
#pragma unroll
    for (int r = 0; r < C; ++r) {
      a += cluster::load(cluster::map(groups + top, r));
      b += cluster::load(cluster::map(groups + top - 1, r));
    }
    const BinChoice g = pick_from_top(a, b, GROUPS - 1, need);
    const u32* bins = hist + g.bin * GROUPS;
    a = b = 0;
#pragma unroll
    for (int r = 0; r < C; ++r) {
      a += cluster::load(cluster::map(bins + top, r));
      b += cluster::load(cluster::map(bins + top - 1, r));
    }
    const BinChoice c = pick_from_top(a, b, GROUPS - 1, need - g.above);
    if (lane == 0) *out = BinChoice{g.bin * GROUPS + c.bin, g.above + c.above, c.count};
  }
#ifdef CUPY_OPS_EXP_TOPK_FIND_BIN_CTA_BARRIER
  // Experiment (docs/perf.md, top-k, eleventh session): the other CTAs may still be reading this
  // CTA's hist and groups; the caller keeps both unchanged until its next cluster barrier (the
  // candidate-list pull and the offsets exchange start with one; the bin-overflow path adds one
  // before its first pass clears hist). A CTA barrier publishes *out.
  __syncthreads();
#else
  cluster::sync();
#endif
}

// Sum the C CTAs' NB-bin histograms `hist` into every CTA's `sum`: CTA q adds up its share of
// the bins over all CTAs and writes them to all CTAs. Entered with every local histogram done.
template <int C, int THREADS, int NB>
__device__ void cluster_sum_histograms(const u32* hist, u32* sum, u32 q) {
  cluster::sync();  // all local histograms done; nobody still reads `sum` from a previous pass
  constexpr int PER = NB / C;
  for (int i = threadIdx.x; i < PER; i += THREADS) {
    const int bin = static_cast<int>(q) * PER + i;
    u32 s = 0;
#pragma unroll
    for (int r = 0; r < C; ++r) s += cluster::load(cluster::map(hist + bin, r));
#pragma unroll
    for (int r = 0; r < C; ++r) cluster::store(cluster::map(sum + bin, r), s);
  }
  cluster::sync();
}

struct Threshold {
  u32 key;   // select keys > key ...
  u32 take;  // ... and the first `take` keys == key (column order)
};

// This CTA's part of a row, element i at position pos0 + i (positions are column - s, int: a row
// has < 2^31 columns). Elements [lo, hi) are candidates (positions inside [0, L)). Warp w owns
// the segment [w * seg, (w + 1) * seg); the first `cw` elements of each segment have their
// 16-bit key prefix in shared memory (slots w * cw ..), the others are read again from logits,
// so every warp has the same share of slow elements. Full keys always come from logits (L2):
// only the few keys inside the threshold bin need them on the fast path.
template <typename T>
struct Slice {
  const T* base;      // logits element of position 0
  long long stride1;
  int pos0, n, lo, hi, seg, cw;
  const unsigned short* cache;

  __device__ __forceinline__ bool valid(int i) const {
    return static_cast<unsigned>(i - lo) < static_cast<unsigned>(hi - lo);
  }
  // hi for a row whose positions [0, len) are candidates
  __device__ __forceinline__ int end_for(int len) const { return max(0, min(n, len - pos0)); }
  __device__ __forceinline__ u32 load(int i) const {
    return order_key(to_float(base[static_cast<long long>(pos0 + i) * stride1]));
  }
  // Key prefix (key >> 16) of element i of warp w's segment.
  template <bool ALL_CACHED>
  __device__ __forceinline__ u32 prefix(int i, int w) const {
    const int rel = i - w * seg;
    if (ALL_CACHED || rel < cw) return cache[w * cw + rel];
    return load(i) >> 16;
  }
  // f(key) for every valid element, block-strided (any order).
  template <typename F>
  __device__ __forceinline__ void for_each_key(F f) const {
    for (int i = threadIdx.x; i < n; i += blockDim.x)
      if (valid(i)) f(load(i));
  }
};

// Four consecutive scores from element i on (i a multiple of GROUP), as floats; invalid
// elements give 0 and are never read. One 16- or 8-byte load where the row is contiguous.
template <typename T>
__device__ __forceinline__ void load_group(const Slice<T>& slice, bool vec, int i, float (&v)[GROUP]) {
  const T* p = slice.base + slice.pos0 + i;
  if (vec && i >= slice.lo && i + GROUP <= slice.hi) {
    if constexpr (sizeof(T) == 4) {
      const float4 f = __ldg(reinterpret_cast<const float4*>(p));
      v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
    } else {
      const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
      const T* h = reinterpret_cast<const T*>(&u);
#pragma unroll
      for (int k = 0; k < GROUP; ++k) v[k] = to_float(h[k]);
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < GROUP; ++k)
    v[k] = slice.valid(i + k) ? to_float(slice.base[static_cast<long long>(slice.pos0 + i + k) * slice.stride1]) : 0.0f;
}

// Where this CTA's part of a row lies and how its warps split it.
template <typename T>
struct Layout {
  Slice<T> slice;
  int seg_first, seg_end;  // this warp's segment: elements [seg_first, seg_end)
  bool short_slice;        // every full key fits in shared memory (see the kernel)
};

// The layout of a row of `len` scores from `base` (position 0) for CTA q of C and warp `warp`:
// groups of GROUP elements from an aligned origin at position -mis, the row's groups split
// evenly over the cluster, the CTA's slice into one segment per warp, walked 32 elements at a
// time, so column order is (CTA, warp, step, lane). Elements [0, len) of the row are valid.
template <typename T, int C, int NW>
__device__ __forceinline__ Layout<T> make_layout(const T* base, long long stride1, bool vec, int len, u32 q,
                                                 int warp, int cache_elems, const unsigned short* cache) {
  const int mis = vec ? static_cast<int>((reinterpret_cast<unsigned long long>(base) / sizeof(T)) % GROUP) : 0;
  const int row_groups = (len + mis + GROUP - 1) / GROUP;
  const int per_cta = (row_groups + C - 1) / C;
  const int g_first = static_cast<int>(q) * per_cta;
  const int n = max(0, min(per_cta, row_groups - g_first)) * GROUP;
  const int pos0 = g_first * GROUP - mis;
  const int seg = (n + 32 * NW - 1) / (32 * NW) * 32;
  const int seg_first = min(n, warp * seg);
  const int cw = min(seg, cache_elems / NW / GROUP * GROUP);
  // Short slices (prefill rows, small decode batches) keep every full key in shared memory,
  // in element order, where the host made room (the prefix cache's region): the gather and
  // the write then read keys on chip, with no L2 round trips for candidates and no step
  // masks. Uniform over the cluster.
  const bool short_slice = CUPY_OPS_TOPK_SHORT_PATH && per_cta * GROUP <= SHORT_CAP && cache_elems >= 2 * SHORT_CAP;
  Layout<T> lay{Slice<T>{base, stride1, pos0, n, max(0, -pos0), 0, seg, cw, cache}, seg_first,
                min(n, seg_first + seg), short_slice};
  lay.slice.hi = lay.slice.end_for(len);
  return lay;
}

// Pass 0's loads: this lane's groups g0, g0 + 32, ... (U of them, those inside its warp's
// segment) into dst.
template <int U, typename T>
__device__ __forceinline__ void load_batch(const Layout<T>& lay, bool vec, int g0, float (&dst)[U][GROUP]) {
  const int groups_here = (lay.seg_end - lay.seg_first) / GROUP;  // segments are whole groups
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int g = g0 + u * 32;
    if (g < groups_here) load_group(lay.slice, vec, lay.seg_first + g * GROUP, dst[u]);
  }
}

// The ordered sweeps: warp w walks its segment [first, end) 32 elements per step; f(x, ok, i)
// runs for U steps at a time (values loaded first, for ILP), in column order, on all lanes
// together (it may use warp votes); ok = element i is a candidate of this warp. get(i) gives x
// (a key or a prefix) of a valid element.
template <int U, typename T, typename G, typename F>
__device__ __forceinline__ void sweep_segment(const Slice<T>& slice, int first, int end, G get, F f) {
  const int lane = threadIdx.x & 31;
  const int lo = max(slice.lo, first), hi = max(lo, min(slice.hi, end));
  for (int i0 = first; i0 < end; i0 += 32 * U) {
    u32 x[U];
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u * 32 + lane;
      ok[u] = static_cast<unsigned>(i - lo) < static_cast<unsigned>(hi - lo);
      x[u] = ok[u] ? get(i) : 0u;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) f(x[u], ok[u], i0 + u * 32 + lane);
  }
}

// Candidate keys in shared memory.
struct KeyList {
  const u32* keys;
  u32 count;
  template <typename F>
  __device__ __forceinline__ void for_each_key(F f) const {
    for (u32 i = threadIdx.x; i < count; i += blockDim.x) f(keys[i]);
  }
};

// [lo, hi] -> its sub-interval `bin` of width 2^shift (clipped at hi): one radix pass's step.
__device__ __forceinline__ void narrow_to_bin(u32& lo, u32& hi, u32 bin, int shift) {
  const unsigned long long new_lo = lo + (static_cast<unsigned long long>(bin) << shift);
  const unsigned long long new_hi = new_lo + ((1ull << shift) - 1ull);
  lo = static_cast<u32>(new_lo);
  hi = static_cast<u32>(new_hi < hi ? new_hi : hi);
}

// Narrow the key interval [lo, hi], holding `count` keys of which the largest `need` are still
// to select, to the exact threshold, with BITS-bit radix passes. source.for_each_key(f) calls
// f(key) for every key of this CTA's source (a KeyList or the whole Slice; keys outside [lo, hi]
// are ignored). With CLUSTER_SUM the histograms are summed over the cluster.
template <int C, int THREADS, int BITS, bool CLUSTER_SUM, typename Source>
__device__ Threshold refine(const Source& source, u32 lo, u32 hi, u32 count, u32 need,
                            u32* hist, u32* sum, u32* buf, BinChoice* choice, u32 q) {
  constexpr int NB = 1 << BITS;
  // Each pass divides the interval width by NB.
  for (int pass = 0; pass <= (32 + BITS - 1) / BITS; ++pass) {
    if (count == need) return Threshold{lo - 1u, 0u};  // take the interval whole (lo >= 1 here)
    if (lo == hi) return Threshold{lo, need};
    const u32 width = hi - lo;
    const int shift = max(0, 32 - __clz(width) - BITS);
    for (int i = threadIdx.x; i < NB; i += THREADS) hist[i] = 0u;
    __syncthreads();
    source.for_each_key([&](u32 k) {
      if (k >= lo && k <= hi) atomicAdd(&hist[(k - lo) >> shift], 1u);
    });
    __syncthreads();
    const u32* H = hist;
    if constexpr (CLUSTER_SUM && C > 1) {
      cluster_sum_histograms<C, THREADS, NB>(hist, sum, q);
      H = sum;
    }
    find_bin<THREADS, NB>(H, need, buf, choice);
    const BinChoice b = *choice;
    need -= b.above;
    count = b.count;
    narrow_to_bin(lo, hi, b.bin, shift);
  }
  return Threshold{lo, need};  // unreachable with consistent data
}

// refine() for a short key list in shared memory, by the calling warp alone (no block
// barriers: the list's few keys cost less than the barriers would).
template <int BITS>
__device__ Threshold refine_warp(const u32* keys, u32 n, u32 lo, u32 hi, u32 count, u32 need, u32* hist) {
  constexpr int NB = 1 << BITS, PER = NB / 32;
  const int lane = threadIdx.x & 31;
  for (int pass = 0; pass <= (32 + BITS - 1) / BITS; ++pass) {
    if (count == need) return Threshold{lo - 1u, 0u};
    if (lo == hi) return Threshold{lo, need};
    const int shift = max(0, 32 - __clz(hi - lo) - BITS);
#pragma unroll
    for (int i = 0; i < PER; ++i) hist[lane + 32 * i] = 0u;
    __syncwarp();
    for (u32 i = lane; i < n; i += 32) {
      const u32 k = keys[i];
      if (k >= lo && k <= hi) atomicAdd(&hist[(k - lo) >> shift], 1u);
    }
    __syncwarp();
    const int top = NB - lane * PER;  // this lane: bins [top-PER, top), top bins first
    u32 h[PER], local = 0;
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      h[i] = hist[top - 1 - i];
      local += h[i];
    }
    const u32 incl = warp_inclusive_sum(local);
    u32 above = incl - local;
    const u32 owner = __ballot_sync(0xffffffffu, above < need && need <= incl);
    if (!owner) return Threshold{lo, need};  // inconsistent data: stop anyway
    u32 bin = 0, cnt = 0;
    if (lane == __ffs(owner) - 1) {
#pragma unroll
      for (int i = 0; i < PER; ++i) {
        if (above + h[i] >= need) {
          bin = static_cast<u32>(top - 1 - i);
          cnt = h[i];
          break;
        }
        above += h[i];
      }
    }
    const int src = __ffs(owner) - 1;
    bin = __shfl_sync(0xffffffffu, bin, src);
    cnt = __shfl_sync(0xffffffffu, cnt, src);
    above = __shfl_sync(0xffffffffu, above, src);
    __syncwarp();  // hist is read by all lanes before the next pass clears it
    need -= above;
    count = cnt;
    narrow_to_bin(lo, hi, bin, shift);
  }
  return Threshold{lo, need};
}

// Two 512-thread CTAs share an SM (prefill's many rows): 64 registers each. (Uncapped, for the
// one-CTA-per-SM decode grids, measured no faster: docs/perf.md, top-k, tenth session.)
template <typename T, int C, int THREADS>
__global__ void CUPY_OPS_CLUSTER_DIMS(C, 1, 1) __launch_bounds__(THREADS, THREADS <= 512 ? 2 : 1) top_k_per_row_kernel(
    const T* __restrict__ logits, long long logits_extent, long long stride0, long long stride1,
    const int* __restrict__ row_a, long long row_a_stride0, long long row_a_stride1,
    const int* __restrict__ row_b, long long row_b_stride,
    int* __restrict__ out, long long out_stride0, int out_stride1,
    int num_rows, int top_k, int mode, int next_n, int cache_elems, int mask_steps, int spec_cols) {
  static_assert(C == 1 || C == 2 || C == 4 || C == 8, "portable cluster sizes");
  static_assert(THREADS % 32 == 0 && THREADS <= 1024 && BINS % THREADS == 0, "whole warps");
  constexpr int NW = THREADS / 32;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const long long row = blockIdx.x / C;
  const u32 q = C > 1 ? cluster::rank() : 0u;
#ifdef CUPY_OPS_TOPK_CTA_TIMES
  const unsigned long long cta_t0 = global_ns();
  const long long cta_c0 = clock64();
#endif
#ifdef CUPY_OPS_EXP_TOPK_PARAMS_FIRST
  // Experiment (docs/perf.md, top-k, eleventh session): read one parameter from each 64-byte
  // line of the parameter block (0x210 logits, 0x248 row_b, 0x284 spec_cols) before anything
  // else, so the lines' constant-cache misses overlap instead of coming one after another along
  // the prologue's dependencies (ncu: the prologue's parameter loads hold ~7% of all stall samples).
  asm volatile("" ::"l"(logits), "l"(row_b), "r"(spec_cols));
#endif
  if (row >= num_rows) return;  // uniform over the cluster
#ifdef CUPY_OPS_TOPK_TIMING
  long long marks[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
#endif
  TOPK_MARK(0);

  extern __shared__ uint4 dynamic_smem[];
  u32* hist = reinterpret_cast<u32*>(dynamic_smem);   // [BINS] local counts
  u32* sum = hist + BINS;                             // [BINS] cluster sums / all candidates
  u32* cand = C > 1 ? sum + BINS : sum;               // [CAND_CAP] this CTA's candidate keys
  u32* cand_idx = cand + CAND_CAP;                    // [CAND_CAP] ... and their elements
  unsigned short* cache = reinterpret_cast<unsigned short*>(cand_idx + CAND_CAP);  // [cache_elems]
  // {above, in} per 32-element step, where the host had room for all of this CTA's steps (the
  // host sizes for rows of logits.shape[1] columns; clamped garbage ranges can be longer)
  uint2* step_masks = reinterpret_cast<uint2*>(cache + cache_elems);
  __shared__ u32 buf[32];  // per-warp partial sums of find_bin
  __shared__ BinChoice choice;
  __shared__ u32 group_sums[64];  // find_bin_cluster's groups of 64 coarse bins (read by the cluster)
  __shared__ Threshold th_shared;
  __shared__ u32 cand_count, warp_gt[NW], warp_in[NW], warp_eq[NW], warp_base[NW], warp_take[NW];
  __shared__ u32 published[2];  // this CTA's {count above T, count equal T}, read by others

  // ---- the row's candidate range, clamped to what logits holds
  const bool decode = mode == MODE_DECODE || mode == MODE_DECODE_2D;
  long long s = 0, e = 0;
  if (!decode) {
    s = row_a[row * row_a_stride0];
    e = row_b[row * row_b_stride];
  } else {
    // 32-bit: a 64-bit division is a long software routine ahead of the seq_lens read
    const int r = static_cast<int>(row), b = r / next_n, j = r - b * next_n;
    if (mode == MODE_DECODE) {
      e = static_cast<long long>(row_a[b * row_a_stride0]) - next_n + j + 1;
    } else {
      e = row_a[b * row_a_stride0 + j * row_a_stride1];
    }
  }
  const long long row_offset = row * stride0;
  long long col_limit = 0;  // columns c with row_offset + c * stride1 inside logits
  if (row_offset < logits_extent) {  // (no 64-bit division for contiguous rows: see above)
    const long long left = logits_extent - row_offset;
    col_limit = stride1 == 1 ? left : stride1 > 0 ? (left - 1) / stride1 + 1 : (1ll << 40);
  }
  const bool vec = stride1 == 1;  // then a slice's origin (position -mis) is GROUP-element aligned
  // Decode rows start at column 0, so with spec_cols > 0 (the host's logits.shape[1]) this CTA's
  // slice is laid out as that of a spec_len-long row, which needs no seq_lens: the first pass-0
  // loads go out while seq_lens is still in flight (one DRAM round trip before the histogram
  // instead of two). A longer row (only without validation) is laid out again from its length.
  const int spec_len = decode ? static_cast<int>(min(static_cast<long long>(spec_cols), col_limit)) : 0;
  constexpr int U = PASS0_U;
  float nxt[U][GROUP];  // pass 0's first batch of this lane
  Layout<T> lay;
  if (spec_len > 0) {
    lay = make_layout<T, C, NW>(logits + row_offset, stride1, vec, spec_len, q, warp, cache_elems, cache);
    load_batch<U>(lay, vec, lane, nxt);
  }
  for (int i = tid; i < BINS; i += THREADS) hist[i] = 0u;  // overlaps the loads above
  if (tid == 0) cand_count = 0u;
  s = max(s, 0ll);
  e = min(e, col_limit);
  const int L = static_cast<int>(e > s ? e - s : 0);  // int32 row ranges: < 2^31
  int* out_row = out + row * out_stride0;

  if (L <= top_k) {  // identity then -1 padding; scores are not read (spec §2)
    for (int j = q * THREADS + tid; j < top_k; j += C * THREADS)
      out_row[static_cast<long long>(j) * out_stride1] = j < L ? j : -1;
    return;
  }
  TOPK_MARK(1);

  const bool relaid = L > spec_len;  // uniform over the cluster
  if (relaid) {
    lay = make_layout<T, C, NW>(logits + row_offset + s * stride1, stride1, vec, L, q, warp, cache_elems, cache);
  } else {
    lay.slice.hi = lay.slice.end_for(L);  // the loads could read further
  }
  const Slice<T>& slice = lay.slice;
  const int n = slice.n, pos0 = slice.pos0, seg = slice.seg, cw = slice.cw;
  const int seg_first = lay.seg_first, seg_end = lay.seg_end;
  const bool all_cached = cw >= seg, short_slice = lay.short_slice;
  u32* short_keys = reinterpret_cast<u32*>(cache);
  const bool use_masks = NW * (seg / 32) <= mask_steps && !short_slice;
  // ---- pass 0: every element of this warp's segment once, GROUP at a time straight into
  // registers (U groups in flight per lane): keys, the coarse histogram, and the 16-bit key
  // prefix of the first cw elements into the cache (short slices: every full key).
  __syncthreads();  // hist zeroed
  {
    const int groups_here = (seg_end - seg_first) / GROUP;  // segments are whole groups
    unsigned short* mine = cache + warp * cw;
    // Keys, histogram counts and cached prefixes / keys of one batch (groups g0, g0 + 32, ...).
    auto count_batch = [&](const float (&v)[U][GROUP], int g0) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int g = g0 + u * 32;
        if (g >= groups_here) break;
        const int i = seg_first + g * GROUP;
        u32 key[GROUP];
#pragma unroll
        for (int k = 0; k < GROUP; ++k) {
          key[k] = order_key(v[u][k]);
          if (slice.valid(i + k)) atomicAdd(&hist[coarse_bin(key[k])], 1u);
        }
        if (short_slice) {
          *reinterpret_cast<uint4*>(short_keys + i) = make_uint4(key[0], key[1], key[2], key[3]);
        } else if (g * GROUP < cw) {  // prefixes; invalid elements are never read
          *reinterpret_cast<uint2*>(mine + g * GROUP) =
              make_uint2(key[0] >> 16 | (key[1] >> 16) << 16, key[2] >> 16 | (key[3] >> 16) << 16);
        }
      }
    };
    // A lane always has the next U groups in flight while it converts and counts these (long
    // rows: without it pass 0 took ~2x the DRAM time of its bytes).
    if (relaid) load_batch<U>(lay, vec, lane, nxt);
    for (int g0 = lane; g0 < groups_here; g0 += 32 * U) {
      float v[U][GROUP];
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int k = 0; k < GROUP; ++k) v[u][k] = nxt[u][k];
      if (g0 + 32 * U < groups_here) load_batch<U>(lay, vec, g0 + 32 * U, nxt);
      if (g0 == lane) TOPK_MARK(2);  // the first batch has arrived
      count_batch(v, g0);
    }
  }
  TOPK_MARK(7);
  __syncthreads();
  TOPK_MARK(8);
  if constexpr (C > 1) {
    find_bin_cluster<C, THREADS>(hist, group_sums, static_cast<u32>(top_k), &choice);
  } else {
    find_bin<THREADS, BINS>(hist, static_cast<u32>(top_k), buf, &choice);
  }
  const BinChoice b0 = choice;
  const u32 need0 = static_cast<u32>(top_k) - b0.above;
  const u32 lo0 = static_cast<u32>(coarse_bin_first_key(b0.bin));
  const u32 hi0 = static_cast<u32>(coarse_bin_first_key(b0.bin + 1) - 1ull);
  // Bins are whole ranges of key >> 17, so the prefixes decide above / inside exactly.
  const u32 plo = lo0 >> 16, phi = hi0 >> 16;
  const bool listed = b0.count <= CAND_CAP;  // uniform over the cluster
  TOPK_MARK(3);

  // ---- gather: per-warp counts above / inside the threshold bin, candidate list
  {
    u32 n_above = 0, n_in = 0;
    // x: the key prefix, or for short slices the full key (then the bin's own key bounds)
    const u32 x_lo = short_slice ? lo0 : plo, x_hi = short_slice ? hi0 : phi;
    auto gather = [&](u32 x, bool ok, int i) {
      const bool above = ok && x > x_hi;
      const bool in = ok && x >= x_lo && !above;
      const u32 ma = __ballot_sync(0xffffffffu, above);
      const u32 m = __ballot_sync(0xffffffffu, in);
      n_above += __popc(ma);
      n_in += __popc(m);
      if (use_masks && lane == 0 && i < seg_end) step_masks[i >> 5] = make_uint2(ma, m);  // lane 0: the step start
      if (listed && m) {  // rare: one atomic per warp step with candidates
        u32 at = 0;
        if (lane == 0) at = atomicAdd(&cand_count, __popc(m));
        at = __shfl_sync(0xffffffffu, at, 0) + __popc(m & ((1u << lane) - 1u));
        if (in && at < CAND_CAP) {
          cand[at] = slice.load(i);  // the full key, from L2
          cand_idx[at] = static_cast<u32>(i);
        }
      }
    };
    // Short slices keep no masks: each lane counts its own keys, summed over the warp after the
    // sweep, and no step votes: only the lanes holding candidates (rare) meet, in a branch, to
    // take list slots with one atomic, so a step without candidates waits for no other lane.
    auto gather_short = [&](u32 x, bool ok, int i) {
      const bool above = ok && x > x_hi;
      const bool in = ok && x >= x_lo && !above;
      n_above += above;
      n_in += in;
      if (in && listed) {
        const u32 m = __activemask();  // the lanes here now (each group that arrives takes its own slots)
        const int first = __ffs(m) - 1;
        u32 at = 0;
        if (lane == first) at = atomicAdd(&cand_count, __popc(m));
        at = __shfl_sync(m, at, first) + __popc(m & ((1u << lane) - 1u));
        if (at < CAND_CAP) {
          cand[at] = x;
          cand_idx[at] = static_cast<u32>(i);
        }
      }
    };
    if (short_slice) {
      sweep_segment<SHORT_U>(slice, seg_first, seg_end, [&](int i) { return short_keys[i]; }, gather_short);
      n_above = __reduce_add_sync(0xffffffffu, n_above);
      n_in = __reduce_add_sync(0xffffffffu, n_in);
    } else if (all_cached) {
      sweep_segment<4>(slice, seg_first, seg_end, [&](int i) { return slice.template prefix<true>(i, warp); }, gather);
    } else {
      sweep_segment<4>(slice, seg_first, seg_end, [&](int i) { return slice.template prefix<false>(i, warp); }, gather);
    }
    if (lane == 0) {
      warp_gt[warp] = n_above;
      warp_in[warp] = n_in;
      warp_eq[warp] = 0u;
    }
    TOPK_MARK(9);
  }
  __syncthreads();
  TOPK_MARK(10);

  // ---- the exact threshold, and each warp's counts above / equal to it
  Threshold th;
  const bool whole_bin = b0.count == need0;
  if (whole_bin) {
    th = Threshold{lo0 - 1u, 0u};  // the bin is taken whole (lo0 >= 1: L > top_k keys exist)
    if (tid < NW) warp_gt[tid] += warp_in[tid];
  } else if (listed) {
    const u32 mine = min(cand_count, static_cast<u32>(CAND_CAP));
    u32 total = mine;
    if constexpr (C > 1) {
      // Every CTA pulls all C lists into `sum` (free now: the pass-0 sums were consumed), all
      // remote loads in flight together.
      cluster::sync();
      u32 cnt = 0;
      if (lane < C) cnt = min(cluster::load(cluster::map(&cand_count, lane)), static_cast<u32>(CAND_CAP));
      const u32 incl = warp_inclusive_sum(cnt);
      u32 first[C];
#pragma unroll
      for (int r = 0; r < C; ++r) first[r] = __shfl_sync(0xffffffffu, incl - cnt, r);
      total = min(__shfl_sync(0xffffffffu, incl, C - 1), static_cast<u32>(CAND_CAP));
      for (u32 j = tid; j < total; j += THREADS) {
        u32 r = 0, off = 0;
#pragma unroll
        for (int t = 1; t < C; ++t) {
          if (j >= first[t]) {
            r = t;
            off = first[t];
          }
        }
        sum[j] = cluster::load(cluster::map(cand + (j - off), r));
      }
      __syncthreads();
    }
    if (total <= WARP_REFINE_MAX) {  // short list: one warp, no block barriers
      if (warp == 0) {
        const Threshold t = refine_warp<LIST_BITS>(sum, total, lo0, hi0, total, need0, hist);
        if (lane == 0) th_shared = t;
      }
      __syncthreads();
      th = th_shared;
    } else {
      th = refine<C, THREADS, LIST_BITS, false>(KeyList{sum, total}, lo0, hi0, total, need0, hist,
                                                sum, buf, &choice, q);
    }
    TOPK_MARK(11);
    for (u32 c = tid; c < mine; c += THREADS) {
      const u32 k = cand[c];
      const int w = static_cast<int>(cand_idx[c]) / seg;
      if (k > th.key) atomicAdd(&warp_gt[w], 1u);
      else if (k == th.key) atomicAdd(&warp_eq[w], 1u);
    }
  } else {
#ifdef CUPY_OPS_EXP_TOPK_FIND_BIN_CTA_BARRIER
    if constexpr (C > 1) cluster::sync();  // the cluster is done reading hist (find_bin_cluster)
#endif
    th = refine<C, THREADS, 12, true>(slice, lo0, hi0, b0.count, need0, hist, sum, buf, &choice, q);
    u32 gt = 0, eq = 0;
    sweep_segment<2>(slice, seg_first, seg_end, [&](int i) { return slice.load(i); }, [&](u32 k, bool ok, int) {
      gt += ok && k > th.key;
      eq += ok && k == th.key;
    });
    gt = __reduce_add_sync(0xffffffffu, gt);
    eq = __reduce_add_sync(0xffffffffu, eq);
    if (lane == 0) {
      warp_gt[warp] = gt;
      warp_eq[warp] = eq;
    }
  }
  __syncthreads();
  TOPK_MARK(4);

  // ---- offsets: CTAs in rank order, warps in order; ties go to the lowest columns
  u32 gt = 0, eq = 0, gt_incl = 0, eq_incl = 0;
  if (warp == 0) {
    gt = lane < NW ? warp_gt[lane] : 0u;
    eq = lane < NW ? warp_eq[lane] : 0u;
    gt_incl = warp_inclusive_sum(gt);
    eq_incl = warp_inclusive_sum(eq);
    if (lane == 31) {
      published[0] = gt_incl;
      published[1] = eq_incl;
    }
  }
  if constexpr (C > 1) cluster::sync();
  if (warp == 0) {
    u32 gt_before_cta = 0, eq_before_cta = 0;
    if constexpr (C > 1) {
      u32 rg = 0, re = 0;
      if (static_cast<u32>(lane) < q) {
        rg = cluster::load(cluster::map(&published[0], lane));
        re = cluster::load(cluster::map(&published[1], lane));
      }
      gt_before_cta = __reduce_add_sync(0xffffffffu, rg);
      eq_before_cta = __reduce_add_sync(0xffffffffu, re);
    }
    if (lane < NW) {
      const u32 ties_before = eq_before_cta + eq_incl - eq;
      const u32 taken_before = min(th.take, ties_before);
      warp_base[lane] = gt_before_cta + gt_incl - gt + taken_before;
      warp_take[lane] = min(th.take, ties_before + eq) - taken_before;
    }
  }
  if constexpr (C > 1) cluster::arrive();  // this CTA's last remote access is behind it
  __syncthreads();
  TOPK_MARK(5);

  // ---- write: selected positions in ascending order.
  const bool fast_write = use_masks && (whole_bin || listed);
  if (fast_write) {
    // The listed candidates that made it join the gather's "above" masks: keys above T, and
    // the ties each warp takes (its lowest columns: only the one warp whose quota ends inside
    // its ties has to rank them).
    if (!whole_bin) {
      const u32 mine = min(cand_count, static_cast<u32>(CAND_CAP));
      for (u32 c = tid; c < mine; c += THREADS) {
        const u32 k = cand[c], i = cand_idx[c];
        bool take = k > th.key;
        if (k == th.key) {
          const u32 w = i / static_cast<u32>(seg), quota = warp_take[w];
          take = quota >= warp_eq[w];
          if (!take && quota > 0) {
            u32 rank = 0;
            for (u32 d = 0; d < mine; ++d)
              rank += cand[d] == th.key && cand_idx[d] < i && cand_idx[d] / static_cast<u32>(seg) == w;
            take = rank < quota;
          }
        }
        if (take) atomicOr(&step_masks[i >> 5].x, 1u << (i & 31));
      }
      __syncthreads();
    }
    // One step per lane, 32 steps at a time: a scan of the steps' counts gives each lane its
    // slots, then it writes its (few) set bits.
    u32 slot = warp_base[warp];
    const int s_first = seg_first >> 5, s_end = seg_first < seg_end ? (seg_end + 31) >> 5 : s_first;
    for (int s0 = s_first; s0 < s_end; s0 += 32) {
      const int s = s0 + lane;
      u32 m = 0;
      if (s < s_end) {
        const uint2 mm = step_masks[s];
        m = mm.x | (whole_bin ? mm.y : 0u);
      }
      const u32 cnt = __popc(m);
      const u32 incl = warp_inclusive_sum(cnt);
      u32 at = slot + incl - cnt;
      while (m) {
        const int b = __ffs(m) - 1;
        m &= m - 1u;
        if (at < static_cast<u32>(top_k)) out_row[static_cast<long long>(at) * out_stride1] = pos0 + s * 32 + b;
        ++at;
      }
      slot += __shfl_sync(0xffffffffu, incl, 31);
    }
  } else {  // short slices, bin overflow or no room for masks: compare every key again, in column order
    u32 slot = warp_base[warp], ties_left = warp_take[warp];
    const u32 lanes_before = (1u << lane) - 1u;
    // Only a warp whose tie quota ends inside its own ties has to rank them; every other warp
    // takes all or none of its keys equal to T, a plain comparison (the usual row: T's key is
    // unique, so its one warp takes it whole).
    const bool rank_ties = ties_left > 0 && ties_left < warp_eq[warp];
    const bool take_ties = ties_left > 0;
    auto write_all_or_none = [&](u32 k, bool ok, int i) {
      const bool take = ok && (k > th.key || (take_ties && k == th.key));
      const u32 m = __ballot_sync(0xffffffffu, take);
      const u32 at = slot + __popc(m & lanes_before);
      if (take && at < static_cast<u32>(top_k)) out_row[static_cast<long long>(at) * out_stride1] = pos0 + i;
      slot += __popc(m);
    };
    auto write = [&](u32 k, bool ok, int i) {
      bool take = ok && k > th.key;
      const u32 eqm = __ballot_sync(0xffffffffu, ok && k == th.key);
      if (eqm) {
        take = take || ((eqm >> lane & 1u) && __popc(eqm & lanes_before) < ties_left);
        ties_left -= min(ties_left, static_cast<u32>(__popc(eqm)));
      }
      const u32 m = __ballot_sync(0xffffffffu, take);
      const u32 at = slot + __popc(m & lanes_before);
      if (take && at < static_cast<u32>(top_k)) out_row[static_cast<long long>(at) * out_stride1] = pos0 + i;
      slot += __popc(m);
    };
    if (short_slice) {
      auto key = [&](int i) { return short_keys[i]; };
      if (rank_ties) sweep_segment<SHORT_U>(slice, seg_first, seg_end, key, write);
      else sweep_segment<SHORT_U>(slice, seg_first, seg_end, key, write_all_or_none);
    } else {
      sweep_segment<4>(slice, seg_first, seg_end, [&](int i) { return slice.load(i); }, write);
    }
  }
  TOPK_MARK(6);
  if constexpr (C > 1) cluster::wait();  // keep this CTA's shared memory alive for the others
#ifdef CUPY_OPS_TOPK_CTA_TIMES
  __syncthreads();
  if (threadIdx.x == 0) {
    u32 sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
#ifdef CUPY_OPS_TOPK_TIMING
    printf("ctatime %d %u %llu %llu %lld marks %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld\n", int(blockIdx.x), sm,
           cta_t0, global_ns(), clock64() - cta_c0, marks[1] - marks[0], marks[2] - marks[1], marks[7] - marks[2],
           marks[8] - marks[7], marks[3] - marks[8], marks[9] - marks[3], marks[10] - marks[9], marks[11] - marks[10],
           marks[4] - marks[11], marks[5] - marks[4], marks[6] - marks[5]);
#else
    printf("ctatime %d %u %llu %llu %lld\n", int(blockIdx.x), sm, cta_t0, global_ns(), clock64() - cta_c0);
#endif
  }
#endif
#ifdef CUPY_OPS_TOPK_TIMING
  if (blockIdx.x == 0 && (threadIdx.x == 0 || threadIdx.x == blockDim.x - 32)) {
    printf("topk marks warp %d: first loads %lld pass0 loop %lld barrier %lld find_bin %lld gather %lld barrier %lld refine %lld counts %lld offsets %lld write %lld\n",
           warp, marks[2] - marks[1], marks[7] - marks[2], marks[8] - marks[7], marks[3] - marks[8], marks[9] - marks[3],
           marks[10] - marks[9], marks[11] - marks[10], marks[4] - marks[11], marks[5] - marks[4], marks[6] - marks[5]);
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    printf("topk timing C=%d n=%d short=%d cached/warp=%d b0.count=%u: range %lld pass0 %lld select %lld offsets %lld write %lld cycles\n",
           C, n, int(short_slice), cw, b0.count, marks[1] - marks[0], marks[3] - marks[1], marks[4] - marks[3],
           marks[5] - marks[4], marks[6] - marks[5]);
  }
#endif
}

}  // namespace topk
}  // namespace cupy_ops
