// pyagg engine — CUDA backend: register-network coordinate kernels for
// double, Q = 17, 18, 19, 20, 21, 22, 23, 24, 25, 26 (one file per group so that the unrolled
// networks compile in parallel; the list of Q is coord_reg.cuh's q_for, and
// coordinate.cu's dispatch names every one).
#include "coord_reg.cuh"

namespace pyagg {
namespace cuda {
namespace coord {
PYAGG_COORD_Q_INSTANTIATE(double, 17)
PYAGG_COORD_Q_INSTANTIATE(double, 18)
PYAGG_COORD_Q_INSTANTIATE(double, 19)
PYAGG_COORD_Q_INSTANTIATE(double, 20)
PYAGG_COORD_Q_INSTANTIATE(double, 21)
PYAGG_COORD_Q_INSTANTIATE(double, 22)
PYAGG_COORD_Q_INSTANTIATE(double, 23)
PYAGG_COORD_Q_INSTANTIATE(double, 24)
PYAGG_COORD_Q_INSTANTIATE(double, 25)
PYAGG_COORD_Q_INSTANTIATE(double, 26)
}  // namespace coord
}  // namespace cuda
}  // namespace pyagg
