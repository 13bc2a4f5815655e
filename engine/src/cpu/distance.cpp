// PLACEHOLDER — to be replaced by the real implementation. Fills NaN.
#include <cstddef>
#include <cstdint>
#include <limits>
#include "cpu/cpu_backend.h"
namespace pyagg { namespace cpu {
template <typename T> static void fill_nan(std::size_t k, T* out) { for (std::size_t i = 0; i < k; ++i) out[i] = std::numeric_limits<T>::quiet_NaN(); }
template <typename T> void krum(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) { fill_nan<T>(d, out); }
template void krum<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t f, float* out);
template void krum<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t f, double* out);
template <typename T> void multi_krum(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, std::size_t m, T* out) { fill_nan<T>(d, out); }
template void multi_krum<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t f, std::size_t m, float* out);
template void multi_krum<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t f, std::size_t m, double* out);
template <typename T> void bulyan(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) { fill_nan<T>(d, out); }
template void bulyan<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t f, float* out);
template void bulyan<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t f, double* out);
template <typename T> void bulyan_multikrum(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, std::size_t m, T* out) { fill_nan<T>(d, out); }
template void bulyan_multikrum<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t f, std::size_t m, float* out);
template void bulyan_multikrum<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t f, std::size_t m, double* out);
template <typename T> void mda(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) { fill_nan<T>(d, out); }
template void mda<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t f, float* out);
template void mda<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t f, double* out);
template <typename T> void nnm(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) { fill_nan<T>(n * d, out); }
template void nnm<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t f, float* out);
template void nnm<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t f, double* out);
template <typename T> void pairwise_sqdist(const T* const* rows, std::size_t n, std::size_t d, double* D) { fill_nan<double>(n * n, D); }
template void pairwise_sqdist<float>(const float* const*, std::size_t, std::size_t, double*);
template void pairwise_sqdist<double>(const double* const*, std::size_t, std::size_t, double*);
}}  // namespace pyagg::cpu
