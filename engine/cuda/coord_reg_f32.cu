// pyagg engine — CUDA backend: register-network coordinate kernels for
// float P=2, float P=4, float P=8, float P=16, float P=32 (one file per group so the unrolled
// networks compile in parallel; see coordinate.cu).
#include "coord_reg.cuh"

namespace pyagg {
namespace cuda {
namespace coord {
PYAGG_COORD_REG_INSTANTIATE(float, 2)
PYAGG_COORD_REG_INSTANTIATE(float, 4)
PYAGG_COORD_REG_INSTANTIATE(float, 8)
PYAGG_COORD_REG_INSTANTIATE(float, 16)
PYAGG_COORD_REG_INSTANTIATE(float, 32)
}  // namespace coord
}  // namespace cuda
}  // namespace pyagg
