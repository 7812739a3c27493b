// Warp-cooperative primitives: every lane calls them with the same (warp-uniform) arguments and
// gets the same result.
#pragma once

namespace cupy_ops {

constexpr unsigned kFullWarp = 0xffffffffu;

__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x & 31u); }

// First index i in [begin, end) with pred(i) == false, or end if there is none, for a predicate
// that holds on a prefix of the range (a sorted-array lower bound). 32-ary search: each round
// the lanes test 32 evenly spaced points and a ballot keeps the interval between the last true
// and the first false point, so a range of n costs ceil(log32 n) rounds (3 rounds for 30 000).
// With a predicate that is not a prefix (unsorted data) the result is still in [begin, end] and
// the loop still ends: the interval shrinks every round.
template <typename Pred>
__device__ __forceinline__ int warp_partition_point(int begin, int end, Pred pred) {
  const int lane = lane_id();
  while (end - begin > 32) {
    // 32 * stride >= end - begin; odd, so that 32 lanes probing shared memory hit 32 banks.
    const int stride = ((end - begin + 31) / 32) | 1;
    const int p = begin + lane * stride;
    const unsigned hits = __ballot_sync(kFullWarp, p < end && pred(p));
    const int c = __popc(hits);                   // points 0..c-1 hold (for a prefix predicate)
    if (c == 0) return begin;
    const int last_true = begin + (c - 1) * stride;
    const int first_false = begin + c * stride;
    end = first_false < end ? first_false : end;
    begin = last_true + 1;
  }
  const int p = begin + lane;
  return begin + __popc(__ballot_sync(kFullWarp, p < end && pred(p)));
}

// Number of lanes below this one whose bit is set in mask (rank for a warp-wide compaction).
__device__ __forceinline__ int lanes_below(unsigned mask) {
  return __popc(mask & ((1u << lane_id()) - 1u));
}

}  // namespace cupy_ops
