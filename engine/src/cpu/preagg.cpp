// PLACEHOLDER — to be replaced by the real implementation. Fills NaN.
#include <cstddef>
#include <cstdint>
#include <limits>
#include "cpu/cpu_backend.h"
namespace pyagg { namespace cpu {
template <typename T> static void fill_nan(std::size_t k, T* out) { for (std::size_t i = 0; i < k; ++i) out[i] = std::numeric_limits<T>::quiet_NaN(); }
template <typename T> void bucketing(const T* const* rows, std::size_t n, std::size_t d, std::size_t s, std::uint64_t seed, T* out) { fill_nan<T>(((n + s - 1) / s) * d, out); }
template void bucketing<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t s, std::uint64_t seed, float* out);
template void bucketing<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t s, std::uint64_t seed, double* out);
template <typename T> void clipping(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, double tau, T* out) { fill_nan<T>(n * d, out); }
template void clipping<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t f, double tau, float* out);
template void clipping<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t f, double tau, double* out);
}}  // namespace pyagg::cpu
