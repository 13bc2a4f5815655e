// PLACEHOLDER — to be replaced by the real implementation. Fills NaN.
#include <cstddef>
#include <cstdint>
#include <limits>
#include "cpu/cpu_backend.h"
namespace pyagg { namespace cpu {
template <typename T> static void fill_nan(std::size_t k, T* out) { for (std::size_t i = 0; i < k; ++i) out[i] = std::numeric_limits<T>::quiet_NaN(); }
template <typename T> void geometric_median(const T* const* rows, std::size_t n, std::size_t d, double nu, std::int64_t max_iter, double tol, T* out) { fill_nan<T>(d, out); }
template void geometric_median<float>(const float* const* rows, std::size_t n, std::size_t d, double nu, std::int64_t max_iter, double tol, float* out);
template void geometric_median<double>(const double* const* rows, std::size_t n, std::size_t d, double nu, std::int64_t max_iter, double tol, double* out);
template <typename T> void centered_clipping(const T* const* rows, std::size_t n, std::size_t d, double tau, std::int64_t iters, const T* state, T* out) { fill_nan<T>(d, out); }
template void centered_clipping<float>(const float* const* rows, std::size_t n, std::size_t d, double tau, std::int64_t iters, const float* state, float* out);
template void centered_clipping<double>(const double* const* rows, std::size_t n, std::size_t d, double tau, std::int64_t iters, const double* state, double* out);
}}  // namespace pyagg::cpu
