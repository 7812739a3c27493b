// Element types and the one conversion seam between them and fp32 arithmetic.
//
// Every kernel computes in fp32 and converts only at loads and stores, through to_float() and
// from_float<T>(). Rounding is round-to-nearest-even everywhere (what vLLM's fp16/bf16 helpers do).
// fp8 types (e4m3 "fn" and e5m2, as torch names them) decode exactly to fp32; scaling is the
// caller's business.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

namespace cupy_ops {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__nv_fp8_e4m3 x) { return static_cast<float>(x); }
__device__ __forceinline__ float to_float(__nv_fp8_e5m2 x) { return static_cast<float>(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __nv_fp8_e4m3 from_float<__nv_fp8_e4m3>(float x) {
  return __nv_fp8_e4m3(x);  // saturates to the finite range, as torch's float8_e4m3fn cast does
}
template <> __device__ __forceinline__ __nv_fp8_e5m2 from_float<__nv_fp8_e5m2>(float x) {
  return __nv_fp8_e5m2(x);
}

// The fp8 format of a cache element type, for the paired conversions in cuda_fp8.h.
template <typename KV> __device__ __forceinline__ __nv_fp8_interpretation_t fp8_kind();
template <> __device__ __forceinline__ __nv_fp8_interpretation_t fp8_kind<__nv_fp8_e4m3>() { return __NV_E4M3; }
template <> __device__ __forceinline__ __nv_fp8_interpretation_t fp8_kind<__nv_fp8_e5m2>() { return __NV_E5M2; }

}  // namespace cupy_ops
