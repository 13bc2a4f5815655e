// pyagg engine — CUDA backend: register-network coordinate kernels for
// double P=64 (one file per group so the unrolled
// networks compile in parallel; see coordinate.cu).
#include "coord_reg.cuh"

namespace pyagg {
namespace cuda {
namespace coord {
PYAGG_COORD_REG_INSTANTIATE(double, 64)
}  // namespace coord
}  // namespace cuda
}  // namespace pyagg
