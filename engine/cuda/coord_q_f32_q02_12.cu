// pyagg engine — CUDA backend: register-network coordinate kernels for
// float, Q = 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 (one file per group so that the unrolled
// networks compile in parallel; the list of Q is coord_reg.cuh's q_for, and
// coordinate.cu's dispatch names every one).
#include "coord_reg.cuh"

namespace pyagg {
namespace cuda {
namespace coord {
PYAGG_COORD_Q_INSTANTIATE(float, 2)
PYAGG_COORD_Q_INSTANTIATE(float, 3)
PYAGG_COORD_Q_INSTANTIATE(float, 4)
PYAGG_COORD_Q_INSTANTIATE(float, 5)
PYAGG_COORD_Q_INSTANTIATE(float, 6)
PYAGG_COORD_Q_INSTANTIATE(float, 7)
PYAGG_COORD_Q_INSTANTIATE(float, 8)
PYAGG_COORD_Q_INSTANTIATE(float, 9)
PYAGG_COORD_Q_INSTANTIATE(float, 10)
PYAGG_COORD_Q_INSTANTIATE(float, 11)
PYAGG_COORD_Q_INSTANTIATE(float, 12)
}  // namespace coord
}  // namespace cuda
}  // namespace pyagg
