// pyagg engine — CUDA backend: register-network coordinate kernels for
// double, Q = 27, 28, 29, 30, 31, 32 (one file per group so that the unrolled
// networks compile in parallel; the list of Q is coord_reg.cuh's q_for, and
// coordinate.cu's dispatch names every one).
#include "coord_reg.cuh"

namespace pyagg {
namespace cuda {
namespace coord {
PYAGG_COORD_Q_INSTANTIATE(double, 27)
PYAGG_COORD_Q_INSTANTIATE(double, 28)
PYAGG_COORD_Q_INSTANTIATE(double, 29)
PYAGG_COORD_Q_INSTANTIATE(double, 30)
PYAGG_COORD_Q_INSTANTIATE(double, 31)
PYAGG_COORD_Q_INSTANTIATE(double, 32)
}  // namespace coord
}  // namespace cuda
}  // namespace pyagg
