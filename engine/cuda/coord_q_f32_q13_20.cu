// pyagg engine — CUDA backend: register-network coordinate kernels for
// float, Q = 13, 14, 15, 16, 17, 18, 19, 20 (one file per group so that the unrolled
// networks compile in parallel; the list of Q is coord_reg.cuh's q_for, and
// coordinate.cu's dispatch names every one).
#include "coord_reg.cuh"

namespace pyagg {
namespace cuda {
namespace coord {
PYAGG_COORD_Q_INSTANTIATE(float, 13)
PYAGG_COORD_Q_INSTANTIATE(float, 14)
PYAGG_COORD_Q_INSTANTIATE(float, 15)
PYAGG_COORD_Q_INSTANTIATE(float, 16)
PYAGG_COORD_Q_INSTANTIATE(float, 17)
PYAGG_COORD_Q_INSTANTIATE(float, 18)
PYAGG_COORD_Q_INSTANTIATE(float, 19)
PYAGG_COORD_Q_INSTANTIATE(float, 20)
}  // namespace coord
}  // namespace cuda
}  // namespace pyagg
