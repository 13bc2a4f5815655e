// pyagg engine — CUDA backend: pairwise squared distances of n rows (Krum,
// Multi-Krum, Bulyan, Bulyan-MultiKrum, MDA, NNM).
//
// D[i][j] = sum_k (x_ik - x_jk)^2 in the exact difference form (no Gram-form
// cancellation: rows 1e3 + 1e-2 noise keep their exact ranking), from ONE pass
// over the data; a row holding a NaN or an inf is infinitely far from every
// row (D = +inf, its diagonal too); the diagonal of a finite row is 0.
//
// Kernel design (measured choices are in bench/gpu_bench.cu's report):
//   - Rows are split in blocks of R = 4; a "pair tile" is a pair of row blocks
//     (bi <= bj): 16 pairs (6 on the diagonal, bi == bj). A thread owns one
//     pair tile and a residue class of coordinates (kg of KG threads per tile):
//     per coordinate it loads 4 + 4 values from shared memory and does 16
//     subtract + fused multiply-add: 0.5 shared loads per pair-coordinate.
//     KG = 32 for few tiles (n = 20: 15 tiles x 32 = 480 threads, one warp per
//     tile, lanes = consecutive coordinates) down to 1 for many (n = 100: 325
//     tiles, one thread each); > 512 tiles are split over grid.y groups.
//   - The block streams chunks of TK coordinates of all n rows through shared
//     memory, double-buffered with cp.async (4/8-byte copies: rows are not
//     16-byte aligned in general); layout [k][r][b] with an odd row pitch
//     4*nb+1, conflict-free both for KG = 32 (lanes differ in k) and KG = 1
//     (lanes differ in the row block).
//   - float input: per-thread float partial sums over a window of about 32
//     coordinates, added to double accumulators (relative error ~1e-7 of D
//     measured, at most ~2e-6: DistancePlan::rel_window); double input:
//     double throughout (DistancePlan::rel_double). A float partial that
//     overflows for a pair of finite rows makes the caller rerun the pass in
//     double.
//   - Non-finite rows are detected in the same pass by the diagonal tiles
//     (which cover every row once) and flagged with atomicOr (order-free).
//   - Determinism: block s of grid.x ("slab") owns chunks s, s+S, s+2S, ...
//     with S fixed from (n, d, dtype) only; each (slab, pair) partial is
//     written by one thread; a second kernel sums the partials of a pair in
//     slab order. Same input -> same bits, on any GPU and any schedule.
#include <algorithm>
#include <cstdint>

#include "common.cuh"

namespace pyagg {
namespace cuda {
namespace {

constexpr int kR = 4;             // rows per row block
constexpr int kMaxThreads = 512;  // threads per block of the distance kernel
constexpr int kMaxTK = 256;       // coordinates per shared-memory chunk (power of two)
constexpr std::size_t kSmemBudget = 100 * 1024;
constexpr std::size_t kMaxPartials = std::size_t(1) << 23;  // doubles of slab partials (64 MiB)
constexpr int kMaxSlabs = 1024;

struct DistArgs {
  long long d;
  int n, nb, ks;  // rows, row blocks, k-major row pitch (4*nb+1)
  int tk_log2, kg_log2;
  int tiles_per_block, total_tiles, off_tiles;
  int nchunks, slabs, flush_every;
  long long npairs;
  int dacc_off;   // byte offset of the window sums in shared memory
  int vec;        // row-major layout: 16-byte copies (x 16-byte aligned, d % (16/sizeof(T)) == 0)
};

__device__ __forceinline__ long long pair_index(int i, int j, int n) {
  // i < j < n: row-major upper triangle without the diagonal.
  return (long long)i * n - (long long)i * (i + 1) / 2 + (j - i - 1);
}

// Shared-memory layouts of one stage (TK coordinates of the 4*nb rows):
//   ROW (one warp per pair tile, lanes = consecutive coordinates): [row][k],
//     rows of TK elements: lanes read consecutive words; 16-byte copies.
//   k-major (one thread per pair tile, lanes = different tiles): [k][r][b]
//     with pitch 4*nb+1 (odd): lanes read the same k of consecutive row
//     blocks; lanes that differ in k (1 < KG < 32) hit different banks.
template <bool ROW>
__device__ __forceinline__ int elem_index(const DistArgs& a, int i, int kk) {
  return ROW ? (i << a.tk_log2) + kk : kk * a.ks + (i & 3) * a.nb + (i >> 2);
}
template <bool ROW>
__device__ __forceinline__ int stage_elems(const DistArgs& a) {
  return ROW ? (kR * a.nb) << a.tk_log2 : a.ks << a.tk_log2;
}

// Loads chunk c (coordinates [c*TK, c*TK+TK)) of all rows into stage buffer s;
// coordinates >= d are zeros (they add nothing to any distance).
template <bool ROW, typename T>
__device__ __forceinline__ void load_chunk(const DistArgs& a, const T* __restrict__ x, T* s, int c) {
  const int TK = 1 << a.tk_log2;
  const long long k0 = (long long)c * TK;
  if (ROW && a.vec) {
    constexpr int V = 16 / int(sizeof(T));
    constexpr int VL = V == 4 ? 2 : 1;
    const int per_row_log2 = a.tk_log2 - VL;
    const int total = a.n << per_row_log2;
    for (int e = threadIdx.x; e < total; e += blockDim.x) {
      const int i = e >> per_row_log2;
      const int kk = (e & ((1 << per_row_log2) - 1)) * V;
      T* dst = s + (i << a.tk_log2) + kk;
      const long long k = k0 + kk;
      if (k < a.d) {
        __pipeline_memcpy_async(dst, x + (long long)i * a.d + k, 16);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) dst[v] = T(0);
      }
    }
    return;
  }
  const int total = a.n << a.tk_log2;
  for (int e = threadIdx.x; e < total; e += blockDim.x) {
    const int i = e >> a.tk_log2;
    const int kk = e & (TK - 1);
    T* dst = s + elem_index<ROW>(a, i, kk);
    const long long k = k0 + kk;
    if (k < a.d)
      __pipeline_memcpy_async(dst, x + (long long)i * a.d + k, sizeof(T));
    else
      *dst = T(0);
  }
}

// Two blocks per SM for the float-window kernel (64 registers); the double
// accumulators need more registers (one block per SM, no spills).
template <typename T, typename ACC, bool ROW>
__global__ void __launch_bounds__(kMaxThreads, std::is_same<ACC, double>::value ? 1 : 2)
    dist_kernel(DistArgs a, const T* __restrict__ x, double* __restrict__ part, int* __restrict__ bad) {
  PYAGG_DYN_SMEM(T, smem);
  const int TK = 1 << a.tk_log2;
  const int KG = 1 << a.kg_log2;
  const int stage = stage_elems<ROW>(a);

  // Zero the padding rows n..4*nb-1 of both stages (never written by loads).
  {
    const int pad = kR * a.nb - a.n;
    const int total = 2 * TK * pad;
    for (int e = threadIdx.x; e < total; e += blockDim.x) {
      const int st = e / (TK * pad);
      const int rem = e - st * (TK * pad);
      const int kk = rem / pad;
      const int i = a.n + (rem - kk * pad);
      smem[st * stage + elem_index<ROW>(a, i, kk)] = T(0);
    }
  }

  // This thread's pair tile.
  const int tl = int(threadIdx.x) >> a.kg_log2;
  const int kg = int(threadIdx.x) & (KG - 1);
  const int t = int(blockIdx.y) * a.tiles_per_block + tl;
  const bool valid = tl < a.tiles_per_block && t < a.total_tiles;
  int bi = 0, bj = 0;
  bool diag = false;
  if (valid) {
    if (t < a.off_tiles) {
      int rem = t;
      int b = 0;
      while (rem >= a.nb - 1 - b) {
        rem -= a.nb - 1 - b;
        ++b;
      }
      bi = b;
      bj = b + 1 + rem;
    } else {
      bi = bj = t - a.off_tiles;
      diag = true;
    }
  }
  // Offsets of the tile's rows in a stage, for coordinate 0; coordinate kk
  // adds kk (ROW) or kk * ks (k-major).
  // Row r of a block sits at offset + r * rstride in both layouts.
  const int oa = elem_index<ROW>(a, kR * bi, 0);
  const int ob = elem_index<ROW>(a, kR * bj, 0);
  const int rstride = ROW ? TK : a.nb;
  const int kstep = ROW ? 1 : a.ks;

  // ACC == double: facc holds the whole sums (no flush); ACC == float: facc
  // holds a window of ~32 coordinates, flushed into double sums kept in
  // shared memory (dsm[p][thread]: 16 more registers would halve occupancy).
  constexpr bool kWindowed = !std::is_same<ACC, double>::value;
  double* dsm = reinterpret_cast<double*>(reinterpret_cast<unsigned char*>(smem) + a.dacc_off);
  ACC facc[16];
#pragma unroll
  for (int p = 0; p < 16; ++p) {
    facc[p] = ACC(0);
    if (kWindowed) dsm[p * blockDim.x + threadIdx.x] = 0.0;
  }
  unsigned badmask = 0;
  int since_flush = 0;

  int c = int(blockIdx.x);
  int st = 0;
  if (c < a.nchunks) load_chunk<ROW>(a, x, smem, c);
  __pipeline_commit();
  for (; c < a.nchunks; c += a.slabs) {
    const int cn = c + a.slabs;
    if (cn < a.nchunks) load_chunk<ROW>(a, x, smem + (st ^ 1) * stage, cn);
    __pipeline_commit();
    __pipeline_wait_prior(1);
    __syncthreads();
    if (valid) {
      const T* s = smem + st * stage;
      if (!diag) {
        for (int kk = kg; kk < TK; kk += KG) {
          const T* base = s + kk * kstep;
          ACC va[kR], vb[kR];
#pragma unroll
          for (int r = 0; r < kR; ++r) {
            va[r] = ACC(base[oa + r * rstride]);
            vb[r] = ACC(base[ob + r * rstride]);
          }
#pragma unroll
          for (int r = 0; r < kR; ++r)
#pragma unroll
            for (int q = 0; q < kR; ++q) {
              const ACC df = va[r] - vb[q];
              facc[r * kR + q] = fma_t(df, df, facc[r * kR + q]);
            }
        }
      } else {
        for (int kk = kg; kk < TK; kk += KG) {
          const T* base = s + kk * kstep;
          ACC va[kR];
#pragma unroll
          for (int r = 0; r < kR; ++r) {
            const T v = base[oa + r * rstride];
            if (!finite_val(v)) badmask |= 1u << r;
            va[r] = ACC(v);
          }
#pragma unroll
          for (int r = 0; r < kR; ++r)
#pragma unroll
            for (int q = r + 1; q < kR; ++q) {
              const ACC df = va[r] - va[q];
              facc[r * kR + q] = fma_t(df, df, facc[r * kR + q]);
            }
        }
      }
      if (kWindowed && ++since_flush >= a.flush_every) {
        since_flush = 0;
#pragma unroll
        for (int p = 0; p < 16; ++p) {
          dsm[p * blockDim.x + threadIdx.x] += double(facc[p]);
          facc[p] = ACC(0);
        }
      }
    }
    __syncthreads();
    st ^= 1;
  }

  // Non-finite rows (diagonal tiles cover every row exactly once).
  if (valid && diag && badmask) {
    for (int r = 0; r < kR; ++r) {
      const int i = kR * bi + r;
      if ((badmask >> r & 1u) && i < a.n) atomicOr(bad + i, 1);
    }
  }

  // Sum the KG threads of a tile in a fixed order, write the slab partials.
  double* red = reinterpret_cast<double*>(smem);
  const long long slab_off = (long long)blockIdx.x * a.npairs;
#pragma unroll
  for (int p = 0; p < 16; ++p) {
    const int r = p / kR, q = p % kR;
    double v = kWindowed ? dsm[p * blockDim.x + threadIdx.x] + double(facc[p]) : double(facc[p]);
    if (KG > 1) {
      __syncthreads();
      red[threadIdx.x] = v;
      __syncthreads();
      if (valid && kg == 0)
        for (int l = 1; l < KG; ++l) v += red[threadIdx.x + l];
    }
    if (valid && kg == 0 && (!diag || q > r)) {
      const int i = kR * bi + r, j = kR * bj + q;
      if (i < a.n && j < a.n) part[slab_off + pair_index(i, j, a.n)] = v;
    }
  }
}

// D from the slab partials: one thread per pair (and per diagonal entry).
__global__ void dist_finalize_kernel(const double* __restrict__ part, const int* __restrict__ bad, int n,
                                     long long npairs, int slabs, double* __restrict__ D) {
  const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const double inf = pos_inf<double>();
  if (t < n) D[t * n + t] = bad[t] ? inf : 0.0;
  if (t >= npairs) return;
  long long rem = t;
  int i = 0;
  while (rem >= n - 1 - i) {
    rem -= n - 1 - i;
    ++i;
  }
  const int j = i + 1 + int(rem);
  double s = 0.0;
  for (int b = 0; b < slabs; ++b) s += part[(long long)b * npairs + t];
  const double v = (bad[i] || bad[j]) ? inf : s;
  D[(long long)i * n + j] = v;
  D[(long long)j * n + i] = v;
}

int log2_exact(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

}  // namespace

template <typename T>
Status plan_distance(std::size_t n, std::size_t d, const DeviceInfo& dev, DistancePlan* plan) {
  DistancePlan p;
  p.n = n;
  p.d = d;
  if (n > std::size_t(1) << 20) return Status::Invalid("CUDA distance kernel: n too large");
  const std::size_t nb = (n + kR - 1) / kR;
  const std::size_t total_tiles = nb * (nb + 1) / 2;
  int kg = 32;
  while (kg > 1 && total_tiles * std::size_t(kg) > std::size_t(kMaxThreads)) kg /= 2;
  std::size_t groups = 1, tpb = total_tiles;
  if (total_tiles * std::size_t(kg) > std::size_t(kMaxThreads)) {
    groups = (total_tiles + kMaxThreads - 1) / kMaxThreads;
    tpb = (total_tiles + groups - 1) / groups;
  }
  if (groups > 65535) return Status::Invalid("CUDA distance kernel: n too large (too many pair tiles)");
  const std::size_t threads = (tpb * std::size_t(kg) + 31) / 32 * 32;
  // Row-major stages (16-byte copies) when a warp owns a tile; else k-major.
  const bool row_major = kg == 32;
  const std::size_t pitch = row_major ? 4 * nb : 4 * nb + 1;  // elements per coordinate of a stage
  const std::size_t budget = std::min<std::size_t>(kSmemBudget, std::size_t(dev.smem_optin) / 2);
  int tk = kMaxTK;
  while (tk > (row_major ? 4 : 1) && 2 * std::size_t(tk) * pitch * sizeof(T) > budget) tk /= 2;
  if (2 * std::size_t(tk) * pitch * sizeof(T) > budget)
    return Status::Invalid("CUDA distance kernel: n=" + std::to_string(n) + " rows do not fit in shared memory");
  const std::size_t nchunks = (d + std::size_t(tk) - 1) / std::size_t(tk);
  if (nchunks > std::size_t(0x7fffffff) - kMaxSlabs) return Status::Invalid("CUDA distance kernel: d too large");
  const std::size_t npairs = n * (n - 1) / 2;
  std::size_t slabs = std::min<std::size_t>(nchunks, kMaxSlabs);
  if (npairs > 0) slabs = std::min<std::size_t>(slabs, std::max<std::size_t>(1, kMaxPartials / npairs));
  slabs = std::max<std::size_t>(slabs, 1);
  const int per_chunk = std::max(1, tk / kg);  // coordinates per thread per chunk
  p.tk = tk;
  p.kg = kg;
  p.tiles_per_block = int(tpb);
  p.groups = int(groups);
  p.slabs = int(slabs);
  p.threads = int(threads);
  // [stages | reduction scratch] then the per-thread double window sums.
  p.row_major = row_major;
  p.dacc_off = std::max<std::size_t>(2 * std::size_t(tk) * pitch * sizeof(T), threads * sizeof(double));
  p.dacc_off = (p.dacc_off + 15) / 16 * 16;
  // float input: room for the double window sums (unused by the double pass).
  p.smem = p.dacc_off + (sizeof(T) == 4 ? 16 * threads * sizeof(double) : 0);
  p.partial_doubles = std::max<std::size_t>(1, slabs * npairs);
  // float partial window: about 32 coordinates per thread.
  p.flush_every = std::max(1, 32 / per_chunk);
  // Error bounds (the terms are non-negative, so relative bounds add up). A
  // thread sums per_chunk coordinates of each of its chunks (at most
  // ceil(nchunks / slabs)); a term fl(x_i - x_j)^2 added by one multiply-add
  // is within gamma_2 of (x_i - x_j)^2, and a recursive sum of k terms adds
  // gamma_{k-1}. Float windows of w = flush_every * per_chunk terms, each
  // converted to double and added to the thread's double sum (one addition
  // per window and one for the last partial window); then the KG threads of a
  // tile, then the slab partials from 0.0 (dist_finalize_kernel).
  auto gamma = [](double k, double u) { return k * u / (1.0 - k * u); };
  const double chunks_per_thread = double((nchunks + slabs - 1) / slabs);
  const double terms = chunks_per_thread * double(per_chunk);
  const double w = double(p.flush_every * per_chunk);
  const double windows = std::ceil(chunks_per_thread / double(p.flush_every));
  const double folds = double(kg) + double(slabs) + 1.0;
  p.rel_window = (1.0 + gamma(w + 2.0, 0x1p-24)) * (1.0 + gamma(windows + 1.0 + folds, 0x1p-53)) - 1.0;
  p.rel_double = gamma(terms + 2.0 + folds, 0x1p-53);
  *plan = p;
  return Status::Ok();
}

template <typename T>
Status run_distance(const DistancePlan& p, const T* x, double* part, int* bad, double* D, bool force_double,
                    cudaStream_t stream) {
  const std::size_t n = p.n;
  const std::size_t nb = (n + kR - 1) / kR;
  DistArgs a;
  a.d = (long long)p.d;
  a.n = int(n);
  a.nb = int(nb);
  a.ks = int(4 * nb + 1);
  a.tk_log2 = log2_exact(p.tk);
  a.kg_log2 = log2_exact(p.kg);
  a.tiles_per_block = p.tiles_per_block;
  a.total_tiles = int(nb * (nb + 1) / 2);
  a.off_tiles = int(nb * (nb - 1) / 2);
  a.nchunks = int((p.d + std::size_t(p.tk) - 1) / std::size_t(p.tk));
  a.slabs = p.slabs;
  a.flush_every = p.flush_every;
  a.npairs = (long long)(n * (n - 1) / 2);
  a.dacc_off = int(p.dacc_off);
  a.vec = (reinterpret_cast<std::uintptr_t>(x) % 16 == 0 && p.d % (16 / sizeof(T)) == 0) ? 1 : 0;
  PYAGG_CUDA_CHECK(cudaMemsetAsync(bad, 0, n * sizeof(int), stream));
  {
    // (n == 1: no pair; the diagonal tile still flags a non-finite row.)
    const dim3 grid(unsigned(p.slabs), unsigned(p.groups));
    const dim3 block(unsigned(p.threads));
    const bool windowed = std::is_same<T, float>::value && !force_double;
    auto kernel = windowed ? (p.row_major ? dist_kernel<T, T, true> : dist_kernel<T, T, false>)
                           : (p.row_major ? dist_kernel<T, double, true> : dist_kernel<T, double, false>);
    PYAGG_RETURN_IF_ERROR(launch(windowed ? "pairwise distance kernel" : "pairwise distance kernel (double sums)",
                                 kernel, grid, block, p.smem, stream, a, x, part, bad));
  }
  const std::size_t work = std::max<std::size_t>(n, n * (n - 1) / 2);
  PYAGG_RETURN_IF_ERROR(launch("distance finalize kernel", dist_finalize_kernel, dim3(ceil_div(work, 256)), dim3(256),
                               0,
                               stream, part, bad, int(n), (long long)(n * (n - 1) / 2), p.slabs, D));
  return Status::Ok();
}

template Status plan_distance<float>(std::size_t, std::size_t, const DeviceInfo&, DistancePlan*);
template Status plan_distance<double>(std::size_t, std::size_t, const DeviceInfo&, DistancePlan*);
template Status run_distance<float>(const DistancePlan&, const float*, double*, int*, double*, bool, cudaStream_t);
template Status run_distance<double>(const DistancePlan&, const double*, double*, int*, double*, bool, cudaStream_t);

}  // namespace cuda
}  // namespace pyagg
