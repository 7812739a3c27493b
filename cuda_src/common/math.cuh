// Small math helpers shared by kernels (NVRTC has no <cmath>/<limits>).
#pragma once

namespace cupy_ops {

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000u); }

}  // namespace cupy_ops
