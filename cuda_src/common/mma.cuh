// Tensor-core helpers: mma.sync m16n8k16 (fp32 accumulate) on bf16 or fp16 operands.
//
// Fragment layout (PTX ISA, per lane: g = lane / 4, c = lane % 4):
//   A 16x16 row-major, 4 regs of 2 elements: {A[g][2c..], A[g+8][2c..], A[g][2c+8..], A[g+8][2c+8..]}
//   B 16x8 (k x n), 2 regs: {B[2c..2c+1][g], B[2c+8..2c+9][g]}
//   C 16x8 fp32, 4 values: C[g][2c], C[g][2c+1], C[g+8][2c], C[g+8][2c+1]
// Two C tiles side by side (n = 16) are exactly one A fragment of the next product, which is how
// softmax probabilities feed P.V without a trip through shared memory.
#pragma once

#include "dtypes.cuh"

namespace cupy_ops {

template <bool COND, typename A, typename B> struct pick_type { using type = A; };
template <typename A, typename B> struct pick_type<false, A, B> { using type = B; };

template <typename MT> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<unsigned*>(&v);
}
template <> __device__ __forceinline__ unsigned pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<unsigned*>(&v);
}

template <typename MT>
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                                        unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                                 unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two consecutive cache elements at `p` (shared memory) as one mma operand register of type MT.
// 16-bit caches are used as they are; fp8 pairs decode exactly to fp16 (both formats fit).
template <typename KV, typename MT>
__device__ __forceinline__ unsigned load_pair(const unsigned char* p) {
  if constexpr (sizeof(KV) == 2) {
    return *reinterpret_cast<const unsigned*>(p);
  } else {
    const __nv_fp8x2_storage_t raw = *reinterpret_cast<const unsigned short*>(p);
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(raw, fp8_kind<KV>());
    return static_cast<unsigned>(h.x) | (static_cast<unsigned>(h.y) << 16);
  }
}

// Four fp8 values in a 32-bit word as two fp16x2 registers: bytes {0, 1} -> lo, {2, 3} -> hi.
template <typename KV>
__device__ __forceinline__ void fp8x4_to_half2x2(unsigned w, unsigned& lo, unsigned& hi) {
  const __half2_raw a = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w & 0xffffu), fp8_kind<KV>());
  const __half2_raw b = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w >> 16), fp8_kind<KV>());
  lo = static_cast<unsigned>(a.x) | (static_cast<unsigned>(a.y) << 16);
  hi = static_cast<unsigned>(b.x) | (static_cast<unsigned>(b.y) << 16);
}

// Two fp8 pairs from one 32-bit load: bytes {0, 1} -> lo, bytes {2, 3} -> hi (as fp16x2).
template <typename KV>
__device__ __forceinline__ void load_fp8_quad(const unsigned char* p, unsigned& lo, unsigned& hi) {
  fp8x4_to_half2x2<KV>(*reinterpret_cast<const unsigned*>(p), lo, hi);
}

// A 32-bit shared-memory load by shared address.
__device__ __forceinline__ unsigned lds32(unsigned addr) {
  unsigned v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}

// Four 8x8 16-bit matrices from shared memory (lane i gives the address of row i % 8 of matrix
// i / 8; rows are 16 contiguous bytes); lane (g, c) receives row g, columns 2c, 2c + 1 of each:
// with the right four matrices, exactly an m16n8k16 A fragment.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&a)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(addr));
}

// The transpose of an 8x8 16-bit matrix held in fragment layout (lane (g, c): row g, columns
// 2c, 2c + 1), in the same layout: turns a C tile (rows = M) into a B fragment (k = those rows).
__device__ __forceinline__ unsigned movmatrix_trans(unsigned x) {
  unsigned y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

}  // namespace cupy_ops
