// pyagg engine — CUDA backend: iterative rules (geometric median, centered
// clipping) and the clipping pre-aggregator, with the CPU backend's exact
// arithmetic (engine/src/cpu/iterative.cpp, preagg.cpp, reduce.h):
//
//   - Every norm follows reduce.h's contract: coordinates cut in blocks of
//     kReduceBlock; inside a block 16 interleaved lanes (lane = offset %
//     16) accumulate ((double)x - center)^2 with one fused multiply-add per
//     term, in coordinate order; the lanes are folded with the same halving
//     tree; the block partials are summed in block order. On the GPU a lane is
//     a thread (16 threads per (row, block)), so the sums are bit-identical to
//     the CPU's whenever the CPU build contracts a*b+c into an FMA (GCC does
//     with -march=native on FMA hardware; otherwise they differ in the last
//     bits, within the tests' stated tolerance).
//   - Per-coordinate updates (z_new = sum_i w_i x_i / W, v += (1/n) sum_i c_i
//     (x_i - v)) are one thread per coordinate, rows in order, fma, as the CPU.
//   - Scalars that steer the iteration (weights, clipping factors, the stop
//     test) are computed on the host from the reduced norms with the CPU's own
//     expressions: n values per iteration, one small copy each way.
// Passes over G per iteration: geometric median 2 (z_new; distances to
// z_new), centered clipping 2 (update; norms for the next iteration).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common.cuh"
#include "common/blocks.h"

namespace pyagg {
namespace cuda {
namespace {

constexpr int kLanes = 16;  // reduce.h kLanes
constexpr long long kBlock = (long long)kReduceBlock;
static_assert(kReduceBlock % kLanes == 0, "reduce block must be a multiple of the lanes");

__device__ __forceinline__ double fold16(double* a) {
  for (int h = kLanes / 2; h >= 1; h /= 2)
    for (int l = 0; l < h; ++l) a[l] = add_d(a[l], a[l + h]);
  return a[0];
}

// grid (nb, ceil(n/16)), block 256 = 16 rows x 16 lanes.
template <typename T>
__global__ void __launch_bounds__(256) row_blocks_kernel(const T* __restrict__ x, int n, long long d,
                                                        const double* __restrict__ center,
                                                        const unsigned char* __restrict__ active,
                                                        double* __restrict__ part, unsigned char* __restrict__ fin) {
  __shared__ double acc_s[256];
  __shared__ unsigned char fin_s[256];
  const int q = int(threadIdx.x) & (kLanes - 1);
  const int r = int(threadIdx.x) >> 4;
  const int i = int(blockIdx.y) * 16 + r;
  const long long b = blockIdx.x;
  const long long lo = b * kBlock;
  const long long len = (d - lo) < kBlock ? (d - lo) : kBlock;
  const bool on = i < n && (!active || active[i]);
  double acc = 0.0;
  bool ok = true;
  if (on) {
    const T* xr = x + (long long)i * d + lo;
    if (center) {
      const double* cr = center + lo;
#pragma unroll 4
      for (long long t = q; t < len; t += kLanes) {
        const T xv = xr[t];
        ok = ok && finite_val(xv);
        const double v = double(xv) - cr[t];
        acc = fma_d(v, v, acc);
      }
    } else {
#pragma unroll 4
      for (long long t = q; t < len; t += kLanes) {
        const T xv = xr[t];
        ok = ok && finite_val(xv);
        const double v = double(xv);
        acc = fma_d(v, v, acc);
      }
    }
  }
  acc_s[threadIdx.x] = acc;
  fin_s[threadIdx.x] = ok ? 1 : 0;
  __syncthreads();
  if (q == 0 && i < n) {
    double a[kLanes];
    unsigned char all = 1;
    for (int l = 0; l < kLanes; ++l) {
      a[l] = acc_s[threadIdx.x + l];
      all &= fin_s[threadIdx.x + l];
    }
    part[b * n + i] = on ? fold16(a) : 0.0;
    if (fin && on) fin[b * n + i] = all;
  }
}

__global__ void combine_kernel(const double* __restrict__ part, const unsigned char* __restrict__ fin, long long nb,
                               long long stride, long long count, double* __restrict__ out,
                               unsigned char* __restrict__ fin_out) {
  const long long qi = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (qi >= count) return;
  double s = 0.0;
  unsigned char ok = 1;
  for (long long b = 0; b < nb; ++b) {
    s = add_d(s, part[b * stride + qi]);
    if (fin) ok &= fin[b * stride + qi];
  }
  out[qi] = s;
  if (fin_out) fin_out[qi] = ok;
}

template <typename T>
__global__ void to_double_kernel(const T* __restrict__ src, long long d, double* __restrict__ dst) {
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < d; k += step)
    dst[k] = src ? double(src[k]) : 0.0;
}

template <typename T>
__global__ void from_double_kernel(const double* __restrict__ src, long long d, T* __restrict__ dst) {
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < d; k += step) dst[k] = T(src[k]);
}

// z[k] = (sum over the given rows, in order, of (double)x) / cnt: the mean
// start of the direct iteration, in double as the CPU computes it
// (cpu/iterative.cpp, geometric_median_mean_start's fallback), never rounded
// to T.
template <typename T>
__global__ void mean_start_kernel(const T* __restrict__ x, long long d, const int* __restrict__ rows, int cnt,
                                  double* __restrict__ z) {
  const long long step = (long long)gridDim.x * blockDim.x;
  const double den = double(cnt);
  for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < d; k += step) {
    double acc = 0.0;
    for (int t = 0; t < cnt; ++t) acc = add_d(acc, double(x[(long long)rows[t] * d + k]));
#if defined(__CUDA_ARCH__)
    z[k] = __ddiv_rn(acc, den);
#else
    z[k] = acc / den;
#endif
  }
}

// z_new[k] = (sum over live rows, in order, of fma(w_t, x)) / wsum.
template <typename T>
__global__ void gm_update_kernel(const T* __restrict__ x, long long d, const int* __restrict__ live, int nlive,
                                 const double* __restrict__ w, double wsum, double* __restrict__ znew) {
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < d; k += step) {
    double acc = 0.0;
    for (int t = 0; t < nlive; ++t) acc = fma_d(w[t], double(x[(long long)live[t] * d + k]), acc);
    znew[k] = acc / wsum;
  }
}

// Per reduce block: the CPU's lanes of ||z_new - z||^2 and ||z||^2 (z: the
// point before the update). block 256 = 16 reduce blocks x 16 lanes.
__global__ void __launch_bounds__(256) gm_delta_kernel(const double* __restrict__ znew, const double* __restrict__ z,
                                                      long long d, long long nb, double* __restrict__ dpart,
                                                      double* __restrict__ zpart) {
  __shared__ double ds[256], zs[256];
  const int q = int(threadIdx.x) & (kLanes - 1);
  const long long b = (long long)blockIdx.x * 16 + (threadIdx.x >> 4);
  double dl = 0.0, zl = 0.0;
  if (b < nb) {
    const long long lo = b * kBlock;
    const long long len = (d - lo) < kBlock ? (d - lo) : kBlock;
    for (long long t = q; t < len; t += kLanes) {
      const double zo = z[lo + t];
      const double diff = znew[lo + t] - zo;
      dl = fma_d(diff, diff, dl);
      zl = fma_d(zo, zo, zl);
    }
  }
  ds[threadIdx.x] = dl;
  zs[threadIdx.x] = zl;
  __syncthreads();
  if (q == 0 && b < nb) {
    double a[kLanes], c[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      a[l] = ds[threadIdx.x + l];
      c[l] = zs[threadIdx.x + l];
    }
    dpart[b] = fold16(a);
    zpart[b] = fold16(c);
  }
}

// v[k] <- v[k] + (1/n) * (sum over live rows, in order, of c_t * (x - v[k])),
// with the CPU's contractions: acc = fma(c_t, x - v, acc); v = fma(1/n, acc, v).
template <typename T>
__global__ void cc_update_kernel(const T* __restrict__ x, long long d, const int* __restrict__ live, int nlive,
                                 const double* __restrict__ c, double inv_n, double* __restrict__ v) {
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < d; k += step) {
    const double vk = v[k];
    double acc = 0.0;
    for (int t = 0; t < nlive; ++t) acc = fma_d(c[t], double(x[(long long)live[t] * d + k]) - vk, acc);
    v[k] = fma_d(inv_n, acc, vk);
  }
}

template <typename T>
__global__ void scale_rows_kernel(const T* __restrict__ x, long long d, const double* __restrict__ scale,
                                  T* __restrict__ out) {
  const long long i = blockIdx.y;
  const double s = scale[i];
  const T* src = x + i * d;
  T* dst = out + i * d;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < d; k += step)
    dst[k] = s < 1.0 ? T(mul_d(double(src[k]), s)) : src[k];
}

unsigned grid1d(std::size_t d, unsigned block = 256, unsigned max_blocks = 65535u * 8u) {
  const std::size_t b = (d + block - 1) / block;
  return unsigned(std::max<std::size_t>(1, std::min<std::size_t>(b, max_blocks)));
}

template <typename V>
Status to_device(V* dst, const std::vector<V>& src, cudaStream_t stream) {
  if (src.empty()) return Status::Ok();
  PYAGG_CUDA_CHECK(cudaMemcpyAsync(dst, src.data(), src.size() * sizeof(V), cudaMemcpyHostToDevice, stream));
  return Status::Ok();
}
template <typename V>
Status to_host(std::vector<V>& dst, const V* src, cudaStream_t stream) {
  if (dst.empty()) return Status::Ok();
  PYAGG_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src, dst.size() * sizeof(V), cudaMemcpyDeviceToHost, stream));
  PYAGG_CUDA_CHECK(cudaStreamSynchronize(stream));
  return Status::Ok();
}

}  // namespace

template <typename T>
Status run_row_blocks(const T* x, std::size_t n, std::size_t d, const double* center, const unsigned char* active,
                      double* part, unsigned char* fin, cudaStream_t stream) {
  const std::size_t nb = reduce_blocks(d);
  if (nb > 0x7fffffffu) return Status::Invalid("d too large for the CUDA backend");
  const std::size_t groups = (n + 15) / 16;
  if (groups > 65535) return Status::Invalid("n too large for the CUDA backend's row reductions");
  return launch("row norm kernel", row_blocks_kernel<T>, dim3(unsigned(nb), unsigned(groups)), dim3(256), 0, stream, x,
                int(n), (long long)d, center, active, part, fin);
}

Status run_combine(const double* part, const unsigned char* fin, std::size_t nb, std::size_t stride,
                   std::size_t count, double* out, unsigned char* fin_out, cudaStream_t stream) {
  if (count == 0) return Status::Ok();
  return launch("block combine kernel", combine_kernel, dim3(ceil_div(count, 128)), dim3(128), 0, stream, part, fin,
                (long long)nb, (long long)stride, (long long)count, out, fin_out);
}

template <typename T>
Status run_scale_rows(const T* x, std::size_t n, std::size_t d, const double* scale, T* out, cudaStream_t stream) {
  if (n > 65535) return Status::Invalid("n too large for the CUDA backend's row scaling");
  const unsigned gx = grid1d(d, 256, std::max<unsigned>(1, unsigned(8192 / n)));
  return launch("row scaling kernel", scale_rows_kernel<T>, dim3(gx, unsigned(n)), dim3(256), 0, stream, x,
                (long long)d, scale, out);
}

// ------------------------------------------------------------ geometric median --
template <typename T>
Status run_geometric_median(const RuleConfig& r, const T* x, std::size_t n, std::size_t d, T* out,
                            const DeviceInfo& dev, Workspace& ws, cudaStream_t stream,
                            const std::vector<std::size_t>* mean_rows) {
  const std::size_t nb = reduce_blocks(d);
  double *z = nullptr, *z2 = nullptr, *part = nullptr, *dpart = nullptr, *zpart = nullptr, *res = nullptr,
         *w_d = nullptr;
  unsigned char *fin = nullptr, *fin_out = nullptr, *act = nullptr;
  int* live_d = nullptr;
  unsigned char* cscratch = nullptr;
  Arena arena;
  arena.add(&z, d);
  arena.add(&z2, d);
  arena.add(&part, nb * n);
  arena.add(&fin, nb * n);
  arena.add(&dpart, nb);
  arena.add(&zpart, nb);
  arena.add(&res, n + 2);
  arena.add(&fin_out, n);
  arena.add(&act, n);
  arena.add(&w_d, n);
  arena.add(&live_d, n);
  arena.add(&cscratch, coord_scratch_bytes(n, d, sizeof(T)));
  PYAGG_RETURN_IF_ERROR(arena.commit(ws));

  // z0: the coordinate-wise median (into out, as T, then in double), or the
  // mean of the caller's rows computed in double (the CPU's start: rounding
  // it to T moved the float32 1-D byz-big results by up to 5e-3, see
  // run_geometric_median's declaration).
  std::vector<int> rows_h;  // the start's rows (host copy kept until return: the upload is asynchronous)
  if (!mean_rows) {
    PYAGG_RETURN_IF_ERROR(run_coordinate<T>(CoordOp::kMedian, x, d, n, WireSource{}, 0, out, cscratch, dev, stream));
    PYAGG_RETURN_IF_ERROR(launch("to double kernel", to_double_kernel<T>, dim3(grid1d(d)), dim3(256), 0, stream,
                                 out, (long long)d, z));
  } else {
    if (mean_rows->size() > n) return Status::Invalid("geometric median: more start rows than rows");
    rows_h.assign(mean_rows->begin(), mean_rows->end());
    PYAGG_RETURN_IF_ERROR(to_device(live_d, rows_h, stream));  // overwritten below by the finite rows
    PYAGG_RETURN_IF_ERROR(launch("geometric median mean start kernel", mean_start_kernel<T>, dim3(grid1d(d)),
                                 dim3(256), 0, stream, x, (long long)d, (const int*)live_d, int(rows_h.size()), z));
  }
  // Pass 0: distances to z0 and the finiteness of every row.
  PYAGG_RETURN_IF_ERROR(run_row_blocks<T>(x, n, d, z, nullptr, part, fin, stream));
  PYAGG_RETURN_IF_ERROR(run_combine(part, fin, nb, n, n, res, fin_out, stream));
  std::vector<double> hres(n + 2);
  std::vector<unsigned char> finite(n);
  PYAGG_RETURN_IF_ERROR(to_host(finite, fin_out, stream));
  {
    std::vector<double> h(n);
    PYAGG_RETURN_IF_ERROR(to_host(h, res, stream));
    std::copy(h.begin(), h.end(), hres.begin());
  }
  std::vector<double> dist(n);
  for (std::size_t i = 0; i < n; ++i) dist[i] = finite[i] ? std::sqrt(hres[i]) : 0.0;
  std::vector<int> live;
  for (std::size_t i = 0; i < n; ++i)
    if (finite[i]) live.push_back(int(i));
  const std::size_t nlive = live.size();
  PYAGG_RETURN_IF_ERROR(to_device(live_d, live, stream));
  PYAGG_RETURN_IF_ERROR(to_device(act, finite, stream));
  std::vector<double> w(nlive);

  for (std::int64_t it = 0; it < r.max_iter && nlive > 0; ++it) {
    double wsum = 0.0;
    for (std::size_t t = 0; t < nlive; ++t) {
      w[t] = 1.0 / std::max(r.nu, dist[std::size_t(live[t])]);
      wsum += w[t];
    }
    if (!(wsum > 0.0)) break;  // W == 0: z is kept
    PYAGG_RETURN_IF_ERROR(to_device(w_d, w, stream));
    PYAGG_RETURN_IF_ERROR(launch("geometric median update kernel", gm_update_kernel<T>, dim3(grid1d(d)), dim3(256), 0,
                                 stream, x, (long long)d, (const int*)live_d, int(nlive), (const double*)w_d, wsum,
                                 z2));
    PYAGG_RETURN_IF_ERROR(launch("geometric median delta kernel", gm_delta_kernel, dim3(ceil_div(nb, 16)), dim3(256), 0,
                                 stream, (const double*)z2, (const double*)z, (long long)d, (long long)nb, dpart,
                                 zpart));
    std::swap(z, z2);
    PYAGG_RETURN_IF_ERROR(run_row_blocks<T>(x, n, d, z, act, part, nullptr, stream));
    PYAGG_RETURN_IF_ERROR(run_combine(part, nullptr, nb, n, n, res, nullptr, stream));
    PYAGG_RETURN_IF_ERROR(run_combine(dpart, nullptr, nb, 1, 1, res + n, nullptr, stream));
    PYAGG_RETURN_IF_ERROR(run_combine(zpart, nullptr, nb, 1, 1, res + n + 1, nullptr, stream));
    PYAGG_RETURN_IF_ERROR(to_host(hres, res, stream));
    const double delta = std::sqrt(hres[n]);
    const double znorm = std::sqrt(hres[n + 1]);
    for (std::size_t t = 0; t < nlive; ++t) dist[std::size_t(live[t])] = std::sqrt(hres[std::size_t(live[t])]);
    if (delta <= r.tol * znorm) break;
  }
  return launch("from double kernel", from_double_kernel<T>, dim3(grid1d(d)), dim3(256), 0, stream, (const double*)z,
                (long long)d, out);
}

// ----------------------------------------------------------- centered clipping --
template <typename T>
Status run_centered_clipping(const RuleConfig& r, const T* x, std::size_t n, std::size_t d, const T* state, T* out,
                             Workspace& ws, cudaStream_t stream) {
  const std::size_t nb = reduce_blocks(d);
  double *v = nullptr, *part = nullptr, *res = nullptr, *c_d = nullptr;
  unsigned char *fin = nullptr, *fin_out = nullptr, *act = nullptr;
  int* live_d = nullptr;
  Arena arena;
  arena.add(&v, d);
  arena.add(&part, nb * n);
  arena.add(&fin, nb * n);
  arena.add(&res, n);
  arena.add(&fin_out, n);
  arena.add(&act, n);
  arena.add(&c_d, n);
  arena.add(&live_d, n);
  PYAGG_RETURN_IF_ERROR(arena.commit(ws));

  PYAGG_RETURN_IF_ERROR(launch("to double kernel", to_double_kernel<T>, dim3(grid1d(d)), dim3(256), 0, stream, state,
                               (long long)d, v));
  PYAGG_RETURN_IF_ERROR(run_row_blocks<T>(x, n, d, v, nullptr, part, fin, stream));
  PYAGG_RETURN_IF_ERROR(run_combine(part, fin, nb, n, n, res, fin_out, stream));
  std::vector<unsigned char> finite(n);
  std::vector<double> norm2(n);
  PYAGG_RETURN_IF_ERROR(to_host(finite, fin_out, stream));
  PYAGG_RETURN_IF_ERROR(to_host(norm2, res, stream));
  std::vector<int> live;
  for (std::size_t i = 0; i < n; ++i)
    if (finite[i]) live.push_back(int(i));
  const std::size_t nlive = live.size();
  PYAGG_RETURN_IF_ERROR(to_device(live_d, live, stream));
  PYAGG_RETURN_IF_ERROR(to_device(act, finite, stream));
  const double inv_n = 1.0 / static_cast<double>(n);  // the CPU's (1/n) * sum
  std::vector<double> c(nlive);

  for (std::int64_t it = 0; it < r.iters && nlive > 0; ++it) {
    for (std::size_t t = 0; t < nlive; ++t) {
      const double nrm = std::sqrt(norm2[std::size_t(live[t])]);
      c[t] = nrm == 0.0 ? 1.0 : std::min(1.0, r.tau / nrm);
    }
    PYAGG_RETURN_IF_ERROR(to_device(c_d, c, stream));
    PYAGG_RETURN_IF_ERROR(launch("centered clipping update kernel", cc_update_kernel<T>, dim3(grid1d(d)), dim3(256), 0,
                                 stream, x, (long long)d, (const int*)live_d, int(nlive), (const double*)c_d, inv_n,
                                 v));
    const bool last = it + 1 == r.iters;
    if (!last) {
      PYAGG_RETURN_IF_ERROR(run_row_blocks<T>(x, n, d, v, act, part, nullptr, stream));
      PYAGG_RETURN_IF_ERROR(run_combine(part, nullptr, nb, n, n, res, nullptr, stream));
      PYAGG_RETURN_IF_ERROR(to_host(norm2, res, stream));
    }
  }
  return launch("from double kernel", from_double_kernel<T>, dim3(grid1d(d)), dim3(256), 0, stream, (const double*)v,
                (long long)d, out);
}

// --------------------------------------------------------------- clipping (pre) --
template <typename T>
Status run_clipping(const PreConfig& cfg, const T* x, std::size_t n, std::size_t d, T* out, Workspace& ws,
                    cudaStream_t stream) {
  const std::size_t nb = reduce_blocks(d);
  double *part = nullptr, *res = nullptr, *scale_d = nullptr;
  unsigned char *fin = nullptr, *fin_out = nullptr;
  Arena arena;
  arena.add(&part, nb * n);
  arena.add(&fin, nb * n);
  arena.add(&res, n);
  arena.add(&fin_out, n);
  arena.add(&scale_d, n);
  PYAGG_RETURN_IF_ERROR(arena.commit(ws));
  PYAGG_RETURN_IF_ERROR(run_row_blocks<T>(x, n, d, nullptr, nullptr, part, fin, stream));
  PYAGG_RETURN_IF_ERROR(run_combine(part, fin, nb, n, n, res, fin_out, stream));
  std::vector<double> sq(n), norm(n), scale(n, 1.0);
  std::vector<unsigned char> finite(n);
  PYAGG_RETURN_IF_ERROR(to_host(sq, res, stream));
  PYAGG_RETURN_IF_ERROR(to_host(finite, fin_out, stream));
  // The CPU's scale rule (preagg.cpp, clipping), verbatim.
  const double inf = std::numeric_limits<double>::infinity();
  const std::size_t f = cfg.f;
  const double tau = cfg.tau;
  for (std::size_t i = 0; i < n; ++i) norm[i] = finite[i] ? std::sqrt(sq[i]) : inf;
  if (tau > 0.0) {
    for (std::size_t i = 0; i < n; ++i)
      if (finite[i]) scale[i] = tau / norm[i];
  } else {
    const std::size_t k = (2 * f * (n - f)) / n;
    if (k > 0) {
      std::vector<std::size_t> order(n);
      for (std::size_t i = 0; i < n; ++i) order[i] = i;
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return norm[a] > norm[b]; });
      const double C = norm[order[k]];
      if (std::isfinite(C))
        for (std::size_t i = 0; i < n; ++i)
          if (finite[i] && norm[i] > C) scale[i] = C / norm[i];
    }
  }
  PYAGG_RETURN_IF_ERROR(to_device(scale_d, scale, stream));
  return run_scale_rows<T>(x, n, d, scale_d, out, stream);
}

#define PYAGG_ITER_INSTANTIATE(T)                                                                                 \
  template Status run_row_blocks<T>(const T*, std::size_t, std::size_t, const double*, const unsigned char*,     \
                                    double*, unsigned char*, cudaStream_t);                                      \
  template Status run_scale_rows<T>(const T*, std::size_t, std::size_t, const double*, T*, cudaStream_t);        \
  template Status run_geometric_median<T>(const RuleConfig&, const T*, std::size_t, std::size_t, T*,             \
                                          const DeviceInfo&, Workspace&, cudaStream_t,                           \
                                          const std::vector<std::size_t>*);                                      \
  template Status run_centered_clipping<T>(const RuleConfig&, const T*, std::size_t, std::size_t, const T*, T*,  \
                                           Workspace&, cudaStream_t);                                            \
  template Status run_clipping<T>(const PreConfig&, const T*, std::size_t, std::size_t, T*, Workspace&,          \
                                  cudaStream_t);
PYAGG_ITER_INSTANTIATE(float)
PYAGG_ITER_INSTANTIATE(double)
#undef PYAGG_ITER_INSTANTIATE

}  // namespace cuda
}  // namespace pyagg
