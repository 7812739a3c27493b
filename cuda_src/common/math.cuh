// Small math helpers shared by kernels (NVRTC has no <cmath>/<limits>).
#pragma once

namespace cupy_ops {

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000u); }

constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

// 2^x in one MUFU.EX2 (denormal results flush to zero). __expf(x) is ex2.approx(x * log2e)
// plus range-fixing instructions around it for denormals: a softmax kept in base 2 needs neither
// the multiply nor the fix-ups.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace cupy_ops
