// pyagg engine — CUDA backend: register-network coordinate kernels for
// double P=2, double P=4, double P=8, double P=16, double P=32 (one file per group so the unrolled
// networks compile in parallel; see coordinate.cu).
#include "coord_reg.cuh"

namespace pyagg {
namespace cuda {
namespace coord {
PYAGG_COORD_REG_INSTANTIATE(double, 2)
PYAGG_COORD_REG_INSTANTIATE(double, 4)
PYAGG_COORD_REG_INSTANTIATE(double, 8)
PYAGG_COORD_REG_INSTANTIATE(double, 16)
PYAGG_COORD_REG_INSTANTIATE(double, 32)
}  // namespace coord
}  // namespace cuda
}  // namespace pyagg
