// pyagg engine — CUDA backend: register-network coordinate kernels for
// double, Q = 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 (one file per group so that the unrolled
// networks compile in parallel; the list of Q is coord_reg.cuh's q_for, and
// coordinate.cu's dispatch names every one).
#include "coord_reg.cuh"

namespace pyagg {
namespace cuda {
namespace coord {
PYAGG_COORD_Q_INSTANTIATE(double, 2)
PYAGG_COORD_Q_INSTANTIATE(double, 3)
PYAGG_COORD_Q_INSTANTIATE(double, 4)
PYAGG_COORD_Q_INSTANTIATE(double, 5)
PYAGG_COORD_Q_INSTANTIATE(double, 6)
PYAGG_COORD_Q_INSTANTIATE(double, 7)
PYAGG_COORD_Q_INSTANTIATE(double, 8)
PYAGG_COORD_Q_INSTANTIATE(double, 9)
PYAGG_COORD_Q_INSTANTIATE(double, 10)
PYAGG_COORD_Q_INSTANTIATE(double, 11)
PYAGG_COORD_Q_INSTANTIATE(double, 12)
PYAGG_COORD_Q_INSTANTIATE(double, 13)
PYAGG_COORD_Q_INSTANTIATE(double, 14)
PYAGG_COORD_Q_INSTANTIATE(double, 15)
PYAGG_COORD_Q_INSTANTIATE(double, 16)
}  // namespace coord
}  // namespace cuda
}  // namespace pyagg
