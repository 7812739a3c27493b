// Shared pieces of the paged-attention kernels: cp.async, the K/V tile loader, block-sparse rule.
//
// Tile layouts in shared memory (one pipeline stage, tile = tile_tokens tokens of one kv head):
//   K: [head_size / X][tile][X] cache elements, X = 16 bytes / element: chunk (j, token) at
//      byte (j * tile + token) * 16, so consecutive tokens' chunks are consecutive 16-byte words.
//   V: [head_size][tile] cache elements (a row per head-dim element, tokens contiguous), 16-byte
//      groups XOR-swizzled by row (v_swizzle) so that threads reading different rows at the same
//      token offset hit different banks.
// Slots past the sequence end (and blocks nobody attends) hold zeros in V: their probability is
// 0, and 0 * garbage could be NaN.
#pragma once

#include "async_copy.cuh"

namespace cupy_ops {

constexpr int PA_THREADS = 128;
constexpr int PA_THREADS8 = 256;  // paged_decode_mma8_kernel
constexpr float PA_FLT_MAX = 3.402823466e38f;

// Copy `bytes` (1..16, a power of two) global -> shared; cp.async where the size allows it.
__device__ __forceinline__ void copy_small(unsigned char* smem, const unsigned char* gmem, int bytes) {
  if (bytes == 16) {
    cp_async<16>(smem, gmem);
  } else if (bytes == 8) {
    cp_async<8>(smem, gmem);
  } else if (bytes == 4) {
    cp_async<4>(smem, gmem);
  } else {
    for (int i = 0; i < bytes; ++i) smem[i] = gmem[i];
  }
}
__device__ __forceinline__ void zero_small(unsigned char* smem, int bytes) {
  if (bytes == 16) {
    *reinterpret_cast<uint4*>(smem) = make_uint4(0, 0, 0, 0);
  } else {
    for (int i = 0; i < bytes; ++i) smem[i] = 0;
  }
}

__device__ __forceinline__ int v_swizzle(int row, int byte_in_row, int row_bytes) {
  const int groups = row_bytes >> 4;
  const int mask = (groups >= 8 ? 8 : groups) - 1;
  return byte_in_row ^ ((row & mask) << 4);
}

// The decode kernels' parameter list (templates over T, KV, O), packed by one host table
// (DECODE_PARAMS / MMA_DECODE_PARAMS in ops/paged_attention.py); the tensor-core kernels add v2's
// partition size and the in-launch split merge's arguments.
#define PAGED_DECODE_PARAMS                                                                    \
  O *out, float *exp_sums, float *max_logits, const T *query, const KV *key_cache,              \
      const KV *value_cache, const int *block_tables, const int *seq_lens,                      \
      const float *alibi_slopes, const float *k_scale_ptr, const float *v_scale_ptr,            \
      float scale, int num_heads, int num_kv_heads, int group, int head_size, int log2_bs,      \
      int tile_tokens, int split_tokens, int num_partitions, long long q_stride_seq,            \
      long long q_stride_head, long long k_stride_block, long long k_stride_head,               \
      long long v_stride_block, long long v_stride_head, long long block_tables_stride,         \
      int max_table_tokens, long long out_stride_seq, long long out_stride_head,                \
      long long out_stride_part, int tp_rank, int bs_local_blocks, int bs_vert_stride,          \
      int bs_block_size, int bs_sliding_step
#define PAGED_DECODE_MMA_PARAMS                                                                \
  PAGED_DECODE_PARAMS, int part_tokens, T *final_out, long long final_stride_seq,               \
      long long final_stride_head, int *split_counters

// Block-sparse (spec §4.4): is kv-cache block `blk` attended by query head h / kv head kvh?
__device__ __forceinline__ bool bs_attended(int blk, int block_size, int seq_len, int h, int kvh,
                                            int num_heads, int num_kv_heads, int tp_rank,
                                            int vert_stride, int local_blocks, int bs_block_size,
                                            int sliding_step) {
  const int q_blk = (seq_len - 1) / bs_block_size;
  const int kb = (blk * block_size) / bs_block_size;
  const int off = sliding_step >= 0 ? (tp_rank * num_heads + h) * sliding_step + 1
                                    : (tp_rank * num_kv_heads + kvh) * (-sliding_step) + 1;
  return ((kb + off) % vert_stride == 0) || (kb > q_blk - local_blocks);
}

// Which work a decode CTA owns: grid x = sequence, y = (kv head, chunk of `heads` query heads of
// its GQA group), z = split of split_tokens tokens. Tokens past the block table's capacity cannot
// be addressed, so seq_len is clamped to it: a table row is never read past its end.
struct DecodeCta {
  int seq, kv_head, head0, heads_here, split, seq_len, begin, end;
  __device__ DecodeCta(int heads, int group, const int* seq_lens, int max_table_tokens, int split_tokens) {
    seq = blockIdx.x;
    const int chunks_per_group = (group + heads - 1) / heads;
    kv_head = blockIdx.y / chunks_per_group;
    head0 = kv_head * group + (blockIdx.y % chunks_per_group) * heads;  // first query head
    heads_here = min(heads, kv_head * group + group - head0);
    split = blockIdx.z;
    seq_len = min(seq_lens[seq], max_table_tokens);
    begin = split * split_tokens;
    end = min(begin + split_tokens, seq_len);
  }
};

template <typename KV>
struct KvTiles {
  static constexpr int ELEM = static_cast<int>(sizeof(KV));
  static constexpr int X = 16 / ELEM;
  unsigned char* k_s;               // STAGES x tile_bytes
  unsigned char* v_s;
  const unsigned char* k_base;      // key_cache + kv_head * k_stride_head (bytes)
  const unsigned char* v_base;
  const int* table;                 // this sequence's block-table row
  long long k_stride_block, v_stride_block;  // elements
  int log2_bs, head_size, tile_tokens, end;

  __device__ int tile_bytes() const { return tile_tokens * head_size * ELEM; }
  __device__ int row_bytes() const { return tile_tokens * ELEM; }
  // V is copied in pieces of one block row when a row is under 16 bytes (small block sizes).
  __device__ int v_piece() const { return min(16, (1 << log2_bs) * ELEM); }

  // Issue the copies of tokens [tile_begin, tile_begin + tile) into `stage` (cp.async; the
  // caller commits and waits). needed(blk) says whether a cache block is read at all.
  template <typename Needed>
  __device__ void load(int tile_begin, int stage, Needed needed) const {
    load_mapped([tile_begin](int p) { return tile_begin + p; }, stage, needed);
  }

  // The same with the tile's tokens given by tok(p), the sequence token at tile position p
  // (0 <= p < tile_tokens), contiguous within each 16-position chunk: with block sizes <= 16 a
  // chunk holds whole cache blocks, so each chunk may come from anywhere in the sequence (the GQA
  // kernel's warps on different v2 partitions).
  template <typename Tok, typename Needed>
  __device__ void load_mapped(Tok tok, int stage, Needed needed) const {
    if (whole_blocks()) {
      load_whole_blocks(tok, stage, needed);
    } else {
      load_by_rows(tok, stage, needed);
    }
  }

  // The tile holds whole cache blocks, each a contiguous [D/X][bs][X] (K) and [D][bs] (V)
  // region per kv head. Each thread serves one block (one block-table lookup per tile, issued
  // before its copies), and the threads of a block copy consecutive 16-byte words, so a warp
  // reads 256-512 contiguous bytes.
  template <typename Tok, typename Needed>
  __device__ void load_whole_blocks(Tok tok, int stage, Needed needed) const {
    load_whole_blocks_from(tok, stage, lookup(tok, needed));
  }

  // Whether load() copies whole blocks (then lookup / load_whole_blocks_from may be used).
  __device__ bool whole_blocks() const {
    const int block_size = 1 << log2_bs;
    return block_size <= tile_tokens && block_size * ELEM >= 16 && (tile_tokens >> log2_bs) <= static_cast<int>(blockDim.x);
  }

  // The physical id of the cache block this thread copies for the tile of tok, or -1
  // when it copies none. Split from the copies so a caller can read the table a tile ahead.
  template <typename Tok, typename Needed>
  __device__ long long lookup(Tok tok, Needed needed) const {
    const int blocks = tile_tokens >> log2_bs;
    const int u = threadIdx.x / (blockDim.x / blocks);
    const int t0 = tok(u << log2_bs);
    const int blk = t0 >> log2_bs;
    return (t0 < end && needed(blk)) ? static_cast<long long>(__ldg(table + blk)) : -1;
  }

  template <typename Tok>
  __device__ void load_whole_blocks_from(Tok tok, int stage, long long looked_up) const {
    const int block_size = 1 << log2_bs;
    unsigned char* ks = k_s + stage * tile_bytes();
    unsigned char* vs = v_s + stage * tile_bytes();
    const int units = head_size * block_size / X;  // 16-byte words per block and head
    const int blocks = tile_tokens >> log2_bs;      // <= blockDim.x, both powers of two
    const int per_block = blockDim.x / blocks;
    const int u = threadIdx.x / per_block;
    const int t0 = tok(u << log2_bs);               // first token of this block in the tile
    const bool live = looked_up >= 0;
    const long long phys = live ? looked_up : 0;
    const int rb = row_bytes();
    for (int f = threadIdx.x - u * per_block; f < units; f += per_block) {
      // K word f: chunk j = f / bs of token o = f % bs. V word f: row d, tokens [ov, ov + X).
      const int j = f >> log2_bs, o = f & (block_size - 1);
      const int e = f * X;
      const int d = e >> log2_bs, ov = e & (block_size - 1);
      unsigned char* vdst = vs + d * rb + v_swizzle(d, ((u << log2_bs) + ov) * ELEM, rb);
      if (live && t0 + o < end)
        cp_async<16>(ks + (j * tile_tokens + (u << log2_bs) + o) * 16,
                     k_base + (phys * k_stride_block + f * X) * ELEM);
      if (live && t0 + ov < end) {
        cp_async<16>(vdst, v_base + (phys * v_stride_block + e) * ELEM);
      } else {
        zero_small(vdst, 16);
      }
    }
  }

  // General case (blocks larger than the tile, or block rows under 16 bytes): K by (chunk,
  // token), V by (row, piece) with pieces of one block row when a row is under 16 bytes.
  template <typename Tok, typename Needed>
  __device__ void load_by_rows(Tok tok, int stage, Needed needed) const {
    const int block_size = 1 << log2_bs;
    unsigned char* ks = k_s + stage * tile_bytes();
    unsigned char* vs = v_s + stage * tile_bytes();
    const int chunks = head_size / X;
    for (int c = threadIdx.x; c < chunks * tile_tokens; c += blockDim.x) {
      const int j = c / tile_tokens, tl = c - j * tile_tokens;
      const int t = tok(tl);
      if (t >= end) continue;
      const int blk = t >> log2_bs;
      if (!needed(blk)) continue;
      const long long phys = __ldg(table + blk);
      const long long elem = phys * k_stride_block +
                             (static_cast<long long>(j) * block_size + (t & (block_size - 1))) * X;
      cp_async<16>(ks + c * 16, k_base + elem * ELEM);
    }
    const int piece = v_piece();
    const int rb = row_bytes();
    const int pieces_per_row = rb / piece;
    const int piece_tokens = piece / ELEM;
    for (int c = threadIdx.x; c < head_size * pieces_per_row; c += blockDim.x) {
      const int d = c / pieces_per_row, k = c - d * pieces_per_row;
      const int t = tok(k * piece_tokens);
      unsigned char* dst = vs + d * rb + v_swizzle(d, k * piece, rb);
      const int blk = t >> log2_bs;
      if (t >= end || !needed(blk)) {
        zero_small(dst, piece);
        continue;
      }
      const long long phys = __ldg(table + blk);
      const long long elem = phys * v_stride_block + static_cast<long long>(d) * block_size +
                             (t & (block_size - 1));
      copy_small(dst, v_base + elem * ELEM, piece);
    }
  }

  // After the copies of a tile with only `valid` tokens landed: zero the tokens >= valid that
  // share a copied piece with valid ones (they may hold NaN). Ends with a barrier if it wrote.
  __device__ void clear_tail(int stage, int valid) const {
    const int piece_tokens = v_piece() / ELEM;
    const int straddle = valid % piece_tokens;
    if (straddle == 0) return;
    const int count = piece_tokens - straddle;
    const int rb = row_bytes();
    unsigned char* vs = v_s + stage * tile_bytes();
    for (int i = threadIdx.x; i < head_size * count; i += blockDim.x) {
      const int d = i / count, tl = valid + (i - d * count);
      const int byte = tl * ELEM;
      unsigned char* p = vs + d * rb + v_swizzle(d, byte & ~15, rb) + (byte & 15);
      for (int b = 0; b < ELEM; ++b) p[b] = 0;
    }
    __syncthreads();
  }
};

// KvTiles::load_whole_blocks with the per-thread address arithmetic done once per CTA instead of
// once per tile (ncu, fp8 B64 L4096: the loader's two runtime divisions and per-word index math
// were a third of the kernel's instructions). Used by the v1 tensor-core kernels, where it was
// measured (docs/perf.md, p10); the parts kernel got slower with it (111 -> 128 registers). Valid when every thread's words of a block form
// arithmetic sequences in both the global and the shared addresses: blockDim.x a multiple of the
// tile (each thread then serves one block at a fixed token offset) and a V row step that keeps
// the swizzle phase. Otherwise (and for blocks the whole-block path does not take) it calls
// KvTiles::load.
template <typename KV>
struct TileCopier {
  static constexpr int ELEM = KvTiles<KV>::ELEM;
  static constexpr int X = KvTiles<KV>::X;
  const KvTiles<KV>& t;
  bool fast;
  int u_tokens;          // this thread's block: first token offset in the tile (u << log2_bs)
  int k_tok, v_tok;      // token offset of this thread's K words / V words inside the block
  int words;             // 16-byte words this thread copies per tile, of K and of V each
  unsigned k_dst, v_dst; // shared addresses of the first words in stage 0
  int k_step, v_step;    // shared-address step between consecutive words
  int src0, src_step;    // byte offset of the first word in the block, and the step

  __device__ explicit TileCopier(const KvTiles<KV>& tiles) : t(tiles) {
    const int bs = 1 << t.log2_bs;
    const int threads = blockDim.x;
    const int rb = t.row_bytes();
    const int phase = min(8, rb >> 4);  // v_swizzle's period in rows
    fast = t.whole_blocks() && threads % t.tile_tokens == 0;
    const int per_block = fast ? threads * bs / t.tile_tokens : 1;  // a multiple of bs
    const int rows_step = per_block * X >> t.log2_bs;
    fast = fast && rows_step % phase == 0;
    if (!fast) return;
    const int u = threadIdx.x / per_block, f0 = threadIdx.x - u * per_block;
    const int units = t.head_size * bs / X;
    u_tokens = u << t.log2_bs;
    k_tok = f0 & (bs - 1);
    v_tok = (f0 * X) & (bs - 1);
    words = f0 < units ? (units - f0 + per_block - 1) / per_block : 0;
    k_dst = smem_addr(t.k_s) + (((f0 >> t.log2_bs) * t.tile_tokens + u_tokens + k_tok) << 4);
    k_step = (per_block >> t.log2_bs) * t.tile_tokens * 16;
    const int d0 = (f0 * X) >> t.log2_bs;
    v_dst = smem_addr(t.v_s) + d0 * rb + v_swizzle(d0, (u_tokens + v_tok) * ELEM, rb);
    v_step = rows_step * rb;
    src0 = f0 * 16;
    src_step = per_block * 16;
  }

  template <typename Needed>
  __device__ void load(int tile_begin, int stage, Needed needed) const {
    load_mapped([tile_begin](int p) { return tile_begin + p; }, stage, needed);
  }

  // tok(p): the sequence token at tile position p, as KvTiles::load_mapped.
  template <typename Tok, typename Needed>
  __device__ void load_mapped(Tok tok, int stage, Needed needed) const {
    if (!fast) {
      t.load_mapped(tok, stage, needed);
      return;
    }
    const int t0 = tok(u_tokens);
    const int blk = t0 >> t.log2_bs;
    const bool live = t0 < t.end && needed(blk);
    const long long phys = live ? static_cast<long long>(__ldg(t.table + blk)) : 0;
    const bool k_live = live && t0 + k_tok < t.end;
    const bool v_live = live && t0 + v_tok < t.end;
    const unsigned char* k_src = t.k_base + phys * t.k_stride_block * ELEM + src0;
    const unsigned char* v_src = t.v_base + phys * t.v_stride_block * ELEM + src0;
    const unsigned stage_off = stage * t.tile_bytes();
    for (int i = 0; i < words; ++i) {
      if (k_live)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(k_dst + stage_off + i * k_step),
                     "l"(k_src + i * src_step));
      if (v_live) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(v_dst + stage_off + i * v_step),
                     "l"(v_src + i * src_step));
      } else {
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(v_dst + stage_off + i * v_step),
                     "r"(0));
      }
    }
  }
};

}  // namespace cupy_ops
