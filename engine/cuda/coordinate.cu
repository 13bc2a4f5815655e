// pyagg engine — CUDA backend: coordinate-wise rules (average, average-nan,
// median, trimmed-mean, averaged-median, Bulyan's coordinate phase) and row
// means (Multi-Krum, MDA, NNM, bucketing, Bulyan-MultiKrum contributions).
//
// Semantics: exactly the CPU backend's (engine/src/cpu/coordinate.cpp, header
// comment), with the same arithmetic, so results are bit-identical:
//   - one thread per coordinate; consecutive threads read consecutive
//     coordinates of a row (coalesced);
//   - the nw values of a coordinate are loaded into a register array of Q
//     values (Q = nw for nw <= 32, else the next multiple of 8; padding +inf)
//     and sorted with Batcher's odd-even merge network restricted to wires
//     < Q (sortnet.cuh QNet: the same comparators, in the same order, as the
//     CPU's sortnet.h), fully unrolled: compile-time wires, no local memory,
//     no comparator on a padding wire >= Q (n = 20: 103 comparators, not the
//     191 of the 32-wire network); for n > net::kCpuStaticN the trimmed mean
//     applies the CPU's pruned network (bit mask), so the kept values are
//     summed in the CPU's order (below, both sort completely);
//   - the median of n <= 32 values, when all n values of the coordinate are
//     finite, runs only the comparators that reach the two middle wires
//     (sortnet.cuh QMid: the CPU's kMiddle pruning; n = 20: 84 of 103);
//   - the median and the trimmed mean are read out of the registers
//     (compile-time wire indices, selects); the averaged medians write the
//     sorted values to a per-thread column of shared memory for the window
//     search (wires p and p + beta, beta known at run time); every read-out
//     uses the CPU's formulas (median midpoint in double, averaged-median
//     window [c, c+b) with c counted like the CPU, sums in double in wire
//     order);
//   - nw > 128 (float) / > 64 (double): the same comparator list as the CPU
//     (common/sortnet_build.h's construction, from global memory)
//     applied to a per-thread column in a global scratch buffer; nw > 4096:
//     heap sort (the CPU uses std::sort).
//   - sums over rows (averages, row means) are double, in row order, divided
//     in double and rounded to T once.
#include <algorithm>
#include <vector>

#include "common.cuh"
#include "common/blocks.h"
#include "coord_reg.cuh"
#include "sortnet.cuh"

namespace pyagg {
namespace cuda {
namespace coord {
// Instantiated in coord_q_*.cu (compiled in parallel).
#define PYAGG_Q_LIST_F32(X) X(float, 2) X(float, 3) X(float, 4) X(float, 5) X(float, 6) X(float, 7) X(float, 8) X(float, 9) X(float, 10) X(float, 11) X(float, 12) X(float, 13) X(float, 14) X(float, 15) X(float, 16) X(float, 17) X(float, 18) X(float, 19) X(float, 20) X(float, 21) X(float, 22) X(float, 23) X(float, 24) X(float, 25) X(float, 26) X(float, 27) X(float, 28) X(float, 29) X(float, 30) X(float, 31) X(float, 32) X(float, 40) X(float, 48) X(float, 56) X(float, 64) X(float, 72) X(float, 80) X(float, 88) X(float, 96) X(float, 104) X(float, 112) X(float, 120) X(float, 128)
#define PYAGG_Q_LIST_F64(X) X(double, 2) X(double, 3) X(double, 4) X(double, 5) X(double, 6) X(double, 7) X(double, 8) X(double, 9) X(double, 10) X(double, 11) X(double, 12) X(double, 13) X(double, 14) X(double, 15) X(double, 16) X(double, 17) X(double, 18) X(double, 19) X(double, 20) X(double, 21) X(double, 22) X(double, 23) X(double, 24) X(double, 25) X(double, 26) X(double, 27) X(double, 28) X(double, 29) X(double, 30) X(double, 31) X(double, 32) X(double, 40) X(double, 48) X(double, 56) X(double, 64)
PYAGG_Q_LIST_F32(PYAGG_COORD_Q_EXTERN)
PYAGG_Q_LIST_F64(PYAGG_COORD_Q_EXTERN)
}  // namespace coord

namespace {

using namespace coord;

constexpr std::size_t kMaxNetworkN = net::kCpuMaxNetworkN;  // the CPU's limit for networks (std::sort above)

// Heap sort of n values of a column (ascending; values are NaN-free).
template <typename T>
__device__ void heap_sort(const GlobalCol<T>& c, int n) {
  auto sift = [&](int root, int end) {
    for (;;) {
      int child = 2 * root + 1;
      if (child >= end) return;
      if (child + 1 < end && c(child) < c(child + 1)) ++child;
      if (!(c(root) < c(child))) return;
      const T t = c(root);
      c.at(root) = c(child);
      c.at(child) = t;
      root = child;
    }
  };
  for (int s = n / 2 - 1; s >= 0; --s) sift(s, n);
  for (int end = n - 1; end > 0; --end) {
    const T t = c(0);
    c.at(0) = c(end);
    c.at(end) = t;
    sift(0, end);
  }
}

template <typename T>
__global__ void __launch_bounds__(256) coord_generic_kernel(CoordArgs a, const T* __restrict__ x, WireSource src,
                                                           const unsigned short* __restrict__ comps, int ncomp,
                                                           T* __restrict__ scratch, T* __restrict__ out) {
  const bool absent_mode = a.op != int(CoordOp::kTrimmedMean);
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long gtid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const GlobalCol<T> col{scratch + gtid, stride};
  for (long long k = gtid; k < a.d; k += stride) {
    int cnt = 0;
    for (int w = 0; w < a.nw; ++w) col.at(w) = map_value(load_wire(x, a.d, src, w, k), absent_mode, &cnt);
    if (ncomp >= 0) {
      for (int q = 0; q < ncomp; ++q) {
        const int ia = comps[2 * q], ib = comps[2 * q + 1];
        const T xa = col(ia), yb = col(ib);
        col.at(ia) = yb < xa ? yb : xa;
        col.at(ib) = yb < xa ? xa : yb;
      }
    } else {
      heap_sort(col, a.nw);
    }
    out[k] = readout<T>(a, col, cnt);
  }
}

template <typename T>
__global__ void average_kernel(const T* __restrict__ x, int n, long long d, int nan_mode, T* __restrict__ out) {
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < d; k += step) {
    if (!nan_mode) {
      double acc = 0.0;
      for (int i = 0; i < n; ++i) acc = add_d(acc, double(x[(long long)i * d + k]));
      out[k] = T(acc / double(n));
    } else {
      double sum = 0.0, cnt = 0.0;
      for (int i = 0; i < n; ++i) {
        const T v = x[(long long)i * d + k];
        const bool fin = finite_val(v);
        sum = add_d(sum, fin ? double(v) : 0.0);
        cnt = add_d(cnt, fin ? 1.0 : 0.0);
      }
      out[k] = cnt > 0.0 ? T(sum / cnt) : T(0);
    }
  }
}

template <typename T>
__global__ void gather_mean_kernel(const T* __restrict__ x, long long d, const int* __restrict__ set_off,
                                   const int* __restrict__ set_idx, int from_zero, T* __restrict__ out,
                                   long long out_stride, const int* __restrict__ out_row) {
  const int r = int(blockIdx.y);
  const long long orow = out_row ? (long long)out_row[r] : (long long)r;
  const int o0 = set_off[r], o1 = set_off[r + 1];
  const double cnt = double(o1 - o0);
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < d; k += step) {
    double acc;
    int q = o0;
    if (from_zero) {
      acc = 0.0;
    } else {
      acc = double(x[(long long)set_idx[q] * d + k]);
      ++q;
    }
    for (; q < o1; ++q) acc = add_d(acc, double(x[(long long)set_idx[q] * d + k]));
    out[orow * out_stride + k] = T(acc / cnt);
  }
}


template <typename T>
constexpr int max_reg_p() {
  return sizeof(T) == 4 ? 128 : 64;
}

template <typename T>
Status dispatch_q(int Q, const CoordArgs& a, const T* x, const WireSource& src, const net::Mask& mask, T* out,
                  cudaStream_t stream) {
#define PYAGG_Q_CASE(TT, QQ) \
  case QQ: return launch_q<TT, QQ>(a, x, src, mask, out, stream);
  if constexpr (sizeof(T) == 4) {
    switch (Q) {
      PYAGG_Q_LIST_F32(PYAGG_Q_CASE)
      default: break;
    }
  } else {
    switch (Q) {
      PYAGG_Q_LIST_F64(PYAGG_Q_CASE)
      default: break;
    }
  }
#undef PYAGG_Q_CASE
  return Status::Internal("coordinate kernel: no register kernel for Q=" + std::to_string(Q));
}

template <int P>
Status mask_for(std::size_t nw, std::size_t f, net::Mask* mask) {
  std::vector<unsigned char> want(nw, net::kDead);
  for (std::size_t i = f; i < nw - f; ++i) want[i] = net::kBag;
  if (!net::host_mask(net::host_network<P>(), nw, want, mask))
    return Status::Internal("CUDA backend: compile-time sorting network differs from common/sortnet_build.h (P=" +
                            std::to_string(P) + ")");
  return Status::Ok();
}

Status mask_dispatch(int P, std::size_t nw, std::size_t f, net::Mask* mask) {
  switch (P) {
    case 2: return mask_for<2>(nw, f, mask);
    case 4: return mask_for<4>(nw, f, mask);
    case 8: return mask_for<8>(nw, f, mask);
    case 16: return mask_for<16>(nw, f, mask);
    case 32: return mask_for<32>(nw, f, mask);
    case 64: return mask_for<64>(nw, f, mask);
    case 128: return mask_for<128>(nw, f, mask);
    default: return Status::Internal("mask_dispatch: bad P");
  }
}

// The compile-time median networks (sortnet.cuh QMid<Q>, Q <= 32) must equal
// common/sortnet_build.h's pruning of batcher_network(Q) to the middle wires
// (what the CPU runs), comparator for comparator: checked once per process.
template <int Q>
bool mid_network_matches() {
  std::vector<unsigned char> want(Q, net::kDead);
  for (int w = (Q - 1) / 2; w <= Q / 2; ++w) want[std::size_t(w)] = net::kExact;
  const auto ref = net::prune_network(net::batcher_network(std::size_t(Q)), want);
  const auto got = net::host_mid_network<Q>();
  if (ref.size() != got.size()) return false;
  for (std::size_t t = 0; t < ref.size(); ++t)
    if (ref[t].a != got[t].a || ref[t].b != got[t].b) return false;
  return true;
}
template <std::size_t... I>
bool all_mid_networks_match(std::index_sequence<I...>) {
  return (mid_network_matches<int(I) + 2>() && ...);
}
bool mid_networks_ok() {
  static const bool ok = all_mid_networks_match(std::make_index_sequence<net::kCpuStaticN - 1>{});  // Q = 2..32
  return ok;
}

constexpr std::size_t kGenericThreads = 256;
std::size_t generic_grid(std::size_t nw, std::size_t d, std::size_t elem) {
  // The scratch columns: nw values per thread; keep them <= 256 MiB.
  std::size_t threads = std::min<std::size_t>(d, std::size_t(1) << 16);
  const std::size_t cap = (std::size_t(256) << 20) / std::max<std::size_t>(1, nw * elem);
  threads = std::max<std::size_t>(kGenericThreads, std::min(threads, cap));
  return (threads + kGenericThreads - 1) / kGenericThreads;
}

}  // namespace

std::size_t coord_scratch_bytes(std::size_t nw, std::size_t d, std::size_t elem) {
  const int maxp = elem == 4 ? 128 : 64;
  if (nw <= std::size_t(maxp)) return 0;
  const std::size_t ncomp_max = nw <= kMaxNetworkN ? net::batcher_network(nw).size() : 0;
  const std::size_t threads = generic_grid(nw, d, elem) * kGenericThreads;
  return (threads * nw * elem + 255) / 256 * 256 + ncomp_max * 2 * sizeof(unsigned short) + 256;
}

std::size_t reduce_blocks(std::size_t d) { return (d + kReduceBlock - 1) / kReduceBlock; }

template <typename T>
Status run_coordinate(CoordOp op, const T* x, std::size_t d, std::size_t nw, const WireSource& src, std::size_t param,
                      T* out, void* scratch, const DeviceInfo& dev, cudaStream_t stream) {
  (void)dev;
  CoordArgs a;
  a.d = (long long)d;
  a.nw = int(nw);
  a.op = int(op);
  a.param = (long long)param;
  a.use_mask = 0;
  int P = 2;
  while (std::size_t(P) < nw) P <<= 1;
  if (P <= max_reg_p<T>()) {
    const int Q = q_for(nw);
    if (std::size_t(Q) < nw || net::pow2_at_least(Q) != P)
      return Status::Internal("coordinate kernel: bad register bucket Q=" + std::to_string(Q) + " for " +
                              std::to_string(nw) + " values");
    if (op == CoordOp::kMedian && nw <= net::kCpuStaticN && !mid_networks_ok())
      return Status::Internal(
          "CUDA backend: compile-time median network differs from common/sortnet_build.h's pruning");
    net::Mask mask;
    for (auto& w : mask.w) w = 0;
    // The CPU sorts small n completely (compile-time networks, n <=
    // net::kCpuStaticN) and applies the bag-pruned network above: the
    // trimmed mean's kept values are summed in the order that network leaves.
    if (op == CoordOp::kTrimmedMean && nw > net::kCpuStaticN) {
      PYAGG_RETURN_IF_ERROR(mask_dispatch(P, nw, param, &mask));
      a.use_mask = 1;
    }
    return dispatch_q<T>(Q, a, x, src, mask, out, stream);
  }
  // Generic path: the CPU's comparator list, columns in global scratch.
  const std::size_t grid = generic_grid(nw, d, sizeof(T));
  const std::size_t threads = grid * kGenericThreads;
  T* cols = static_cast<T*>(scratch);
  unsigned short* comps = reinterpret_cast<unsigned short*>(static_cast<char*>(scratch) +
                                                            (threads * nw * sizeof(T) + 255) / 256 * 256);
  int ncomp = -1;  // heap sort
  if (nw <= kMaxNetworkN) {
    std::vector<unsigned char> want(nw, net::kExact);
    if (op == CoordOp::kTrimmedMean) {
      want.assign(nw, net::kDead);
      for (std::size_t i = param; i < nw - param; ++i) want[i] = net::kBag;
    }
    const auto netv = net::prune_network(net::batcher_network(nw), want);
    std::vector<unsigned short> host(netv.size() * 2);
    for (std::size_t q = 0; q < netv.size(); ++q) {
      host[2 * q] = static_cast<unsigned short>(netv[q].a);
      host[2 * q + 1] = static_cast<unsigned short>(netv[q].b);
    }
    if (!host.empty())
      PYAGG_CUDA_CHECK(cudaMemcpyAsync(comps, host.data(), host.size() * sizeof(unsigned short),
                                       cudaMemcpyHostToDevice, stream));
    // The pageable copy above is synchronous w.r.t. the host buffer only once
    // the stream reaches it: wait, so that `host` may go out of scope.
    PYAGG_CUDA_CHECK(cudaStreamSynchronize(stream));
    ncomp = int(netv.size());
  }
  return launch("coordinate-wise kernel (generic)", coord_generic_kernel<T>, dim3(unsigned(grid)),
                dim3(unsigned(kGenericThreads)), 0, stream, a, x, src, comps, ncomp, cols, out);
}

template <typename T>
Status run_average(const T* x, std::size_t n, std::size_t d, bool nan_mode, T* out, cudaStream_t stream) {
  const unsigned block = 256;
  return launch(nan_mode ? "average-nan kernel" : "average kernel", average_kernel<T>,
                dim3(grid_for(d, block, 65535u * 8u)), dim3(block), 0, stream, x, int(n), (long long)d,
                int(nan_mode), out);
}

template <typename T>
Status run_gather_mean(const T* x, std::size_t d, std::size_t nsets, const int* set_off, const int* set_idx,
                       bool from_zero, T* out, std::size_t out_stride, cudaStream_t stream, const int* out_row) {
  if (nsets == 0) return Status::Ok();
  if (nsets > 65535) return Status::Internal("gather_mean: too many sets");
  const unsigned block = 256;
  // Enough blocks in x to fill the device with nsets rows of blocks.
  const unsigned gx = grid_for(d, block, std::max<unsigned>(1, unsigned(4096 / nsets)));
  return launch("row mean kernel", gather_mean_kernel<T>, dim3(gx, unsigned(nsets)), dim3(block), 0, stream, x,
                (long long)d, set_off, set_idx, int(from_zero), out, (long long)out_stride, out_row);
}

#define PYAGG_COORD_INSTANTIATE(T)                                                                                 \
  template Status run_coordinate<T>(CoordOp, const T*, std::size_t, std::size_t, const WireSource&, std::size_t, \
                                    T*, void*, const DeviceInfo&, cudaStream_t);                                 \
  template Status run_average<T>(const T*, std::size_t, std::size_t, bool, T*, cudaStream_t);                      \
  template Status run_gather_mean<T>(const T*, std::size_t, std::size_t, const int*, const int*, bool, T*,        \
                                     std::size_t, cudaStream_t, const int*);
PYAGG_COORD_INSTANTIATE(float)
PYAGG_COORD_INSTANTIATE(double)
#undef PYAGG_COORD_INSTANTIATE

}  // namespace cuda
}  // namespace pyagg
