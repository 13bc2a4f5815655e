// pyagg engine — CUDA backend: the kernels of dnc, clipped-clustering, smea,
// caf and zeroing (the host flow is in backend.cu, the selection and weights
// in common/select_next.h, shared with the CPU backend).
//
//   row_abs_kernel   per (reduce block of kReduceBlock coordinates, row):
//                    the L1 and L-inf partials of zeroing (norm_order 1 / inf);
//                    256 threads, fixed strided assignment, fixed tree: the
//                    same bits on every run. (Sums of squares and finiteness
//                    come from the existing run_row_blocks / run_combine.)
//   gather_kernel    DnC's sampled coordinates: buf[i*b + k] = x[i*d + cols[k]].
//   combine_kernel   out[k] = T((sum_t a[t] * x[idx[t]*d + k]) / den), summed in
//                    double in the order of idx with explicit rounding (no
//                    contraction); nan: every output NaN; cnt == 0: zeros.
#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "common/blocks.h"

namespace pyagg {
namespace cuda {
namespace {

template <typename T>
__global__ void row_abs_kernel(const T* __restrict__ x, int n, long long d, long long nb, double* __restrict__ l1,
                               double* __restrict__ li) {
  __shared__ double s1[256], sm[256];
  const long long b = blockIdx.x;
  const int i = blockIdx.y;
  const long long c0 = b * (long long)kReduceBlock;
  const long long c1 = c0 + (long long)kReduceBlock < d ? c0 + (long long)kReduceBlock : d;
  const T* row = x + (long long)i * d;
  double a = 0.0, m = 0.0;
  for (long long k = c0 + threadIdx.x; k < c1; k += 256) {
    const double v = double(row[k]);
    const double av = v < 0 ? -v : v;
    a = add_d(a, av);
    m = av > m ? av : m;
  }
  s1[threadIdx.x] = a;
  sm[threadIdx.x] = m;
  __syncthreads();
  for (int h = 128; h > 0; h >>= 1) {
    if (int(threadIdx.x) < h) {
      s1[threadIdx.x] = add_d(s1[threadIdx.x], s1[threadIdx.x + h]);
      sm[threadIdx.x] = sm[threadIdx.x] > sm[threadIdx.x + h] ? sm[threadIdx.x] : sm[threadIdx.x + h];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    l1[b * n + i] = s1[0];
    li[b * n + i] = sm[0];
  }
}

template <typename T>
__global__ void gather_kernel(const T* __restrict__ x, long long d, const long long* __restrict__ cols, long long b,
                              T* __restrict__ buf) {
  const long long i = blockIdx.y;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < b; k += step)
    buf[i * b + k] = x[i * d + cols[k]];
}

template <typename T>
__global__ void combine_kernel(const T* __restrict__ x, long long d, const int* __restrict__ idx,
                               const double* __restrict__ a, int cnt, double den, int nan, T* __restrict__ out) {
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < d; k += step) {
    if (nan) {
      out[k] = std::numeric_limits<T>::quiet_NaN();
      continue;
    }
    double acc = 0.0;
    for (int t = 0; t < cnt; ++t) acc = add_d(acc, mul_d(a[t], double(x[(long long)idx[t] * d + k])));
#if defined(__CUDA_ARCH__)
    out[k] = cnt ? T(__ddiv_rn(acc, den)) : T(0);
#else
    out[k] = cnt ? T(acc / den) : T(0);
#endif
  }
}

unsigned grid_for(std::size_t d, unsigned max_blocks = 65535u * 8u) {
  const std::size_t b = (d + 255) / 256;
  return unsigned(std::max<std::size_t>(1, std::min<std::size_t>(b, max_blocks)));
}

}  // namespace

template <typename T>
Status run_row_abs(const T* x, std::size_t n, std::size_t d, double* l1, double* li, cudaStream_t stream) {
  const std::size_t nb = reduce_blocks(d);
  if (nb > 0x7fffffffu || n > 65535) return Status::Invalid("n or d too large for the CUDA backend's row norms");
  return launch("row L1/Linf kernel", row_abs_kernel<T>, dim3(unsigned(nb), unsigned(n)), dim3(256), 0, stream, x,
                int(n), (long long)d, (long long)nb, l1, li);
}

template <typename T>
Status run_gather_cols(const T* x, std::size_t n, std::size_t d, const long long* cols, std::size_t b, T* buf,
                       cudaStream_t stream) {
  if (n > 65535) return Status::Invalid("n too large for the CUDA backend's gather");
  return launch("coordinate gather kernel", gather_kernel<T>, dim3(grid_for(b, 4096), unsigned(n)), dim3(256), 0,
                stream, x, (long long)d, cols, (long long)b, buf);
}

template <typename T>
Status run_combine_rows(const T* x, std::size_t d, const int* idx, const double* a, std::size_t cnt, double den,
                        bool nan, T* out, cudaStream_t stream) {
  return launch("row combination kernel", combine_kernel<T>, dim3(grid_for(d)), dim3(256), 0, stream, x,
                (long long)d, idx, a, int(cnt), den, int(nan), out);
}

#define PYAGG_NEXT_INSTANTIATE(T)                                                                                    \
  template Status run_row_abs<T>(const T*, std::size_t, std::size_t, double*, double*, cudaStream_t);              \
  template Status run_gather_cols<T>(const T*, std::size_t, std::size_t, const long long*, std::size_t, T*,        \
                                     cudaStream_t);                                                                \
  template Status run_combine_rows<T>(const T*, std::size_t, const int*, const double*, std::size_t, double, bool, \
                                      T*, cudaStream_t);
PYAGG_NEXT_INSTANTIATE(float)
PYAGG_NEXT_INSTANTIATE(double)
#undef PYAGG_NEXT_INSTANTIATE

}  // namespace cuda
}  // namespace pyagg
