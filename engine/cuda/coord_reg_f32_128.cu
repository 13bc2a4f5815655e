// pyagg engine — CUDA backend: register-network coordinate kernels for
// float P=128 (one file per group so the unrolled
// networks compile in parallel; see coordinate.cu).
#include "coord_reg.cuh"

namespace pyagg {
namespace cuda {
namespace coord {
PYAGG_COORD_REG_INSTANTIATE(float, 128)
}  // namespace coord
}  // namespace cuda
}  // namespace pyagg
