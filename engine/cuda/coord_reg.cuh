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

// Read-outs of the median and the trimmed mean on the Q sorted register
// values (compile-time wire indices only: no local memory, no shared memory).
// Same operations, in the same order, as readout() above: the trimmed mean adds
// wires f..nw-f-1 ascending; the median selects wires (k-1)/2 and k/2.
template <typename T, int Q>
__device__ __forceinline__ void median_pair(const T (&v)[Q], int k, T* lo, T* hi) {
  const int plo = (k - 1) >> 1, phi = k >> 1;  // k <= nw <= Q: phi <= Q/2
  T l = v[0], h = v[0];
#pragma unroll
  for (int p = 1; p <= Q / 2 && p < Q; ++p) {
    l = p == plo ? v[p] : l;
    h = p == phi ? v[p] : h;
  }
  *lo = l;
  *hi = h;
}

template <typename T, int Q>
__device__ __forceinline__ T readout_regs(const CoordArgs& a, const T (&v)[Q], int k) {
  if (a.op == int(CoordOp::kTrimmedMean)) {
    const int lo = int(a.param), hi = a.nw - int(a.param);
    double acc = 0.0;
#pragma unroll
    for (int p = 0; p < Q; ++p)
      if (p >= lo && p < hi) acc = add_d(acc, double(v[p]));
    return T(acc / double(hi - lo));
  }
  // kMedian
  if (k == 0) return T(0);
  T lo, hi;
  median_pair<T, Q>(v, k, &lo, &hi);
  return (k & 1) ? lo : T(midpoint(double(lo), double(hi)));
}

// The averaged (upper) median: the window start c compares wires p and
// p + beta (beta known at run time only), read back from this thread's column
// of shared memory (stride blockDim.x: no bank conflict); the median and the
// window sum come from the registers. Same arithmetic, same order as readout():
// adding 0.0 for a wire outside the window (readout()) leaves the sum
// unchanged (the sum starts at +0.0 and is never -0.0), so skipping it is
// bit-identical.
template <typename T, int Q>
__device__ __forceinline__ T readout_window(const CoordArgs& a, const T (&v)[Q], int k, T* col, int stride) {
#pragma unroll
  for (int w = 0; w < Q; ++w) col[w * stride] = v[w];
  if (k == 0) return T(0);
  T lo, hi;
  median_pair<T, Q>(v, k, &lo, &hi);
  const double m = a.op == int(CoordOp::kAveragedUpperMedian) ? double(hi)
                   : (k & 1)                                    ? double(lo)
                                                                : midpoint(double(lo), double(hi));
  const int nw = a.nw;
  const int beta = int(a.param);
  const int b = k < beta ? k : beta;
  int c = 0;
  for (int p = 0; p + beta < nw; ++p)
    c += (double(col[(p + beta) * stride]) - m) < (m - double(col[p * stride])) ? 1 : 0;
  double acc = 0.0;
#pragma unroll
  for (int p = 0; p < Q; ++p)
    if (p >= c && p < c + b) acc = add_d(acc, double(v[p]));
  return T(acc / double(b));
}

// One thread per coordinate (consecutive threads: consecutive coordinates of
// every row, coalesced); the nw <= Q values of the coordinate in registers,
// wires nw..Q-1 = +inf; the exact-size network QNet<Q> (sortnet.cuh), masked
// to the CPU's pruned network for the trimmed mean above kCpuStaticN values.
// Dynamic shared memory: blockDim.x * Q values for the averaged-median
// read-outs only (0 otherwise).
template <typename T, int Q>
__global__ void __launch_bounds__(256) coord_q_kernel(CoordArgs a, const T* __restrict__ x, WireSource src,
                                                     net::Mask mask, T* __restrict__ out) {
  PYAGG_DYN_SMEM(T, colbuf);
  const bool absent_mode = a.op != int(CoordOp::kTrimmedMean);
  const bool window = a.op == int(CoordOp::kAveragedMedian) || a.op == int(CoordOp::kAveragedUpperMedian);
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < a.d; k += step) {
    T v[Q];
    int cnt = 0;
#pragma unroll
    for (int w = 0; w < Q; ++w) {
      if (w < a.nw)
        v[w] = map_value(load_wire(x, a.d, src, w, k), absent_mode, &cnt);
      else
        v[w] = pos_inf<T>();
    }
    if constexpr (Q > int(net::kCpuStaticN)) {
      if (a.use_mask)
        net::sort_q_masked<Q>(v, mask);
      else
        net::sort_q<Q>(v);
    } else {
      // The median of n == Q values, all finite: only the two middle wires
      // are read (the CPU's kMiddle pruning); else the full network.
      if (a.op == int(CoordOp::kMedian) && a.nw == Q && cnt == Q)
        net::sort_mid<Q>(v);
      else
        net::sort_q<Q>(v);
    }
    out[k] = window ? readout_window<T, Q>(a, v, cnt, colbuf + threadIdx.x, int(blockDim.x))
                    : readout_regs<T, Q>(a, v, cnt);
  }
}

inline unsigned grid_for(std::size_t d, unsigned block, unsigned max_blocks) {
  const std::size_t b = (d + block - 1) / block;
  return unsigned(std::max<std::size_t>(1, std::min<std::size_t>(b, max_blocks)));
}

// Compile-time wire counts: every Q <= kCpuStaticN (32), then multiples of 8
// up to 128 (float) / 64 (double). The bucket never crosses a power of two, so
// QNet<Q>::P is the P of the CPU's network for nw (the mask's indices).
constexpr int kQStep = 8;
inline int q_for(std::size_t nw) {
  if (nw <= 2) return 2;
  if (nw <= net::kCpuStaticN) return int(nw);
  return int((nw + kQStep - 1) / kQStep * kQStep);
}

template <typename T, int Q>
Status launch_q(const CoordArgs& a, const T* x, const WireSource& src, const net::Mask& mask, T* out,
                cudaStream_t stream) {
  const unsigned block = Q > 32 ? 128 : 256;
  const bool window = a.op == int(CoordOp::kAveragedMedian) || a.op == int(CoordOp::kAveragedUpperMedian);
  const std::size_t smem = window ? std::size_t(block) * Q * sizeof(T) : 0;
  const unsigned grid = grid_for(std::size_t(a.d), block, 65535u * 8u);
  return launch("coordinate-wise kernel", coord_q_kernel<T, Q>, dim3(grid), dim3(block), smem, stream, a, x, src,
                mask, out);
}

// Explicit instantiations live in coord_reg_*.cu.
#define PYAGG_COORD_Q_EXTERN(T, Q)                                                                   \
  extern template Status launch_q<T, Q>(const CoordArgs&, const T*, const WireSource&, const net::Mask&, T*, \
                                        cudaStream_t);
#define PYAGG_COORD_Q_INSTANTIATE(T, Q)                                                              \
  template Status launch_q<T, Q>(const CoordArgs&, const T*, const WireSource&, const net::Mask&, T*, \
                                 cudaStream_t);

}  // namespace coord
}  // namespace cuda
}  // namespace pyagg
