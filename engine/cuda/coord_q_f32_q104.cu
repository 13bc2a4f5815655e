// pyagg engine — CUDA backend: register-network coordinate kernels for
// float, Q = 104 (one file per group so that the unrolled
// networks compile in parallel; the list of Q is coord_reg.cuh's q_for, and
// coordinate.cu's dispatch names every one).
#include "coord_reg.cuh"

namespace pyagg {
namespace cuda {
namespace coord {
PYAGG_COORD_Q_INSTANTIATE(float, 104)
}  // namespace coord
}  // namespace cuda
}  // namespace pyagg
