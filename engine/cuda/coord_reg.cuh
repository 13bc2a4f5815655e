// pyagg engine — CUDA backend: the register-network coordinate kernel
// (internal; see coordinate.cu for the design). Instantiated per (T, P) in
// coord_reg_*.cu so that the large unrolled networks compile in parallel.
#pragma once

#include "common.cuh"
#include "sortnet.cuh"

#include <algorithm>

namespace pyagg {
namespace cuda {
namespace coord {

struct CoordArgs {
  long long d;
  int nw;
  int op;            // CoordOp
  long long param;   // f (trimmed mean) or beta (averaged (upper) median)
  int use_mask;      // trimmed mean: apply the pruned network
};

// Value of wire w at coordinate k (the CPU's mean_rows arithmetic for sets).
template <typename T>
__device__ __forceinline__ T load_wire(const T* __restrict__ x, long long d, const WireSource& src, int w,
                                       long long k) {
  if (!src.set_off) {
    const long long row = src.rows ? (long long)src.rows[w] : (long long)w;
    return x[row * d + k];
  }
  const int o0 = src.set_off[w], o1 = src.set_off[w + 1];
  const T first = x[(long long)src.set_idx[o0] * d + k];
  if (o1 - o0 == 1) return first;
  double acc = double(first);
  for (int q = o0 + 1; q < o1; ++q) acc = add_d(acc, double(x[(long long)src.set_idx[q] * d + k]));
  return T(acc / double(o1 - o0));
}

// Load modes of the CPU: kAbsent (non-finite -> +inf, counted out) for the
// median and the averaged median; kNanHigh (NaN -> +inf, +-inf kept) for the
// trimmed mean.
template <typename T>
__device__ __forceinline__ T map_value(T v, bool absent_mode, int* finite_count) {
  if (absent_mode) {
    const bool fin = finite_val(v);
    *finite_count += fin ? 1 : 0;
    return fin ? v : pos_inf<T>();
  }
  return v != v ? pos_inf<T>() : v;
}

// Column accessors (wire p of this thread's sorted values).
template <typename T>
struct SmemCol {
  const T* base;
  int stride;
  __device__ __forceinline__ T operator()(int p) const { return base[p * stride]; }
};
template <typename T>
struct GlobalCol {
  T* base;
  long long stride;
  __device__ __forceinline__ T operator()(int p) const { return base[p * stride]; }
  __device__ __forceinline__ T& at(int p) const { return base[p * stride]; }
};

// The CPU's read-outs (coordinate.cpp), on sorted wires; k = finite count
// (kAbsent modes).
template <typename T, typename Col>
__device__ __forceinline__ T readout(const CoordArgs& a, const Col& col, int k) {
  const int nw = a.nw;
  if (a.op == int(CoordOp::kTrimmedMean)) {
    const int f = int(a.param);
    double acc = 0.0;
    for (int p = f; p < nw - f; ++p) acc = add_d(acc, double(col(p)));
    return T(acc / double(nw - 2 * f));
  }
  if (k == 0) return T(0);
  const T lo = col((k - 1) >> 1), hi = col(k >> 1);
  if (a.op == int(CoordOp::kMedian)) return (k & 1) ? lo : T(midpoint(double(lo), double(hi)));
  // averaged median (around the upper median for kAveragedUpperMedian)
  const double m = a.op == int(CoordOp::kAveragedUpperMedian) ? double(hi)
                   : (k & 1)                                    ? double(lo)
                                                                : midpoint(double(lo), double(hi));
  const int beta = int(a.param);
  const int b = k < beta ? k : beta;
  int c = 0;
  for (int p = 0; p + beta < nw; ++p) c += (double(col(p + beta)) - m) < (m - double(col(p))) ? 1 : 0;
  double acc = 0.0;
  for (int p = 0; p < nw; ++p) acc = add_d(acc, (p >= c && p < c + b) ? double(col(p)) : 0.0);
  return T(acc / double(b));
}

template <typename T, int P>
__global__ void __launch_bounds__(256) coord_reg_kernel(CoordArgs a, const T* __restrict__ x, WireSource src,
                                                       net::Mask mask, T* __restrict__ out) {
  PYAGG_DYN_SMEM(T, colbuf);
  const bool absent_mode = a.op != int(CoordOp::kTrimmedMean);
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < a.d; k += step) {
    T v[P];
    int cnt = 0;
#pragma unroll
    for (int w = 0; w < P; ++w) {
      if (w < a.nw)
        v[w] = map_value(load_wire(x, a.d, src, w, k), absent_mode, &cnt);
      else
        v[w] = pos_inf<T>();
    }
    net::sort_regs<P>(v, a.use_mask ? &mask : nullptr);
    T* col = colbuf + threadIdx.x;
#pragma unroll
    for (int w = 0; w < P; ++w)
      if (w < a.nw) col[w * blockDim.x] = v[w];
    out[k] = readout<T>(a, SmemCol<T>{col, int(blockDim.x)}, cnt);
  }
}

inline unsigned grid_for(std::size_t d, unsigned block, unsigned max_blocks) {
  const std::size_t b = (d + block - 1) / block;
  return unsigned(std::max<std::size_t>(1, std::min<std::size_t>(b, max_blocks)));
}

template <typename T, int P>
Status launch_reg(const CoordArgs& a, const T* x, const WireSource& src, const net::Mask& mask, T* out,
                  cudaStream_t stream) {
  const unsigned block = P >= 64 ? 128 : 256;
  const std::size_t smem = std::size_t(block) * P * sizeof(T);
  const unsigned grid = grid_for(std::size_t(a.d), block, 65535u * 8u);
  return launch("coordinate-wise kernel", coord_reg_kernel<T, P>, dim3(grid), dim3(block), smem, stream, a, x, src,
                mask, out);
}


// Explicit instantiations live in coord_reg_*.cu.
#define PYAGG_COORD_REG_EXTERN(T, P)                                                                  \
  extern template Status launch_reg<T, P>(const CoordArgs&, const T*, const WireSource&, const net::Mask&, T*, \
                                          cudaStream_t);
#define PYAGG_COORD_REG_INSTANTIATE(T, P)                                                              \
  template Status launch_reg<T, P>(const CoordArgs&, const T*, const WireSource&, const net::Mask&, T*, \
                                   cudaStream_t);

}  // namespace coord
}  // namespace cuda
}  // namespace pyagg
