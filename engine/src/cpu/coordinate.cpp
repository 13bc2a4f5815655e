// PLACEHOLDER — to be replaced by the real implementation. Fills NaN.
#include <cstddef>
#include <cstdint>
#include <limits>
#include "cpu/cpu_backend.h"
namespace pyagg { namespace cpu {
template <typename T> static void fill_nan(std::size_t k, T* out) { for (std::size_t i = 0; i < k; ++i) out[i] = std::numeric_limits<T>::quiet_NaN(); }
template <typename T> void average(const T* const* rows, std::size_t n, std::size_t d, T* out) { fill_nan<T>(d, out); }
template void average<float>(const float* const* rows, std::size_t n, std::size_t d, float* out);
template void average<double>(const double* const* rows, std::size_t n, std::size_t d, double* out);
template <typename T> void average_nan(const T* const* rows, std::size_t n, std::size_t d, T* out) { fill_nan<T>(d, out); }
template void average_nan<float>(const float* const* rows, std::size_t n, std::size_t d, float* out);
template void average_nan<double>(const double* const* rows, std::size_t n, std::size_t d, double* out);
template <typename T> void median(const T* const* rows, std::size_t n, std::size_t d, T* out) { fill_nan<T>(d, out); }
template void median<float>(const float* const* rows, std::size_t n, std::size_t d, float* out);
template void median<double>(const double* const* rows, std::size_t n, std::size_t d, double* out);
template <typename T> void trimmed_mean(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) { fill_nan<T>(d, out); }
template void trimmed_mean<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t f, float* out);
template void trimmed_mean<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t f, double* out);
template <typename T> void averaged_median(const T* const* rows, std::size_t n, std::size_t d, std::size_t beta, T* out) { fill_nan<T>(d, out); }
template void averaged_median<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t beta, float* out);
template void averaged_median<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t beta, double* out);
}}  // namespace pyagg::cpu
