// pyagg engine — CPU backend: iterative rules.
//
//   geometric-median   smoothed Weiszfeld iterations, as in RFA (Pillutla,
//                      Kakade, Harchaoui, "Robust aggregation for federated
//                      learning", IEEE TSP 2022). Breakdown point 1/2: n >= 1
//                      (any f < n/2 keeps the output bounded by the honest
//                      rows); output finite whenever at least one row is finite.
//   centered-clipping  (Karimireddy, He, Jaggi, "Learning from history for
//                      Byzantine robust optimization", ICML 2021). n >= 1;
//                      robust for f < n/2 with a suitable tau (momentum).
//
// EXACT SEMANTICS. "Non-finite row" = a row holding a NaN or +-inf. Vectors
// live in double during the iterations; out is rounded to T once at the end.
// Every norm is a deterministic blocked reduction (reduce.h): per block of
// kReduceBlock coordinates a double partial, partials combined in block order.
//
// geometric_median_mean_start(nu, max_iter, tol) (the default, init="mean"):
//   the same iteration from z = mean of the finite rows, run in coefficient
//   space on the distance matrix (common/select_iterative.h): distance pass,
//   row-norm pass, then out = (T) sum_t c_t x_t (double, row order). When the
//   iteration's quadratic forms cancel beyond D's accuracy (a far row keeping
//   a small weight), D is recomputed exactly in double (one more pass) and the
//   iteration runs again on it.
// geometric_median(nu, max_iter, tol) (init="median"):
//   z = median<T>(rows) (coordinate-wise median of the finite values,
//   coordinate.cpp), then in double. Rows are classified finite / non-finite
//   once. Iteration t = 1..max_iter:
//     w_i = 1 / max(nu, ||x_i - z||) for finite rows, 0 for non-finite rows;
//     W = sum_i w_i (row order); if W == 0: stop (z is kept);
//     z_new[j] = (sum over finite rows, row order, of w_i * x_ij) / W;
//     stop if ||z_new - z|| <= tol * ||z|| (z: the point before the update);
//     z = z_new.
//   out = (T) z.  Implementation: one pass over the data per iteration; block b
//   computes z_new on its coordinates, the partials of ||z_new - z||^2 and
//   ||z||^2, then (data still in cache) the partials of ||x_i - z_new||^2 used
//   by the next iteration.
//
// centered_clipping(tau, L, state):
//   v = (double) state, or 0 when state == nullptr. L times:
//     for each finite row: y_i = x_i - v, c_i = min(1, tau / ||y_i||)
//     (||y_i|| == 0 -> c_i = 1);
//     v[j] <- v[j] + (1/n) * (sum over finite rows, row order, of
//     c_i * (x_ij - v[j])), 1/n computed once in double (non-finite rows
//     contribute 0 but still count in n).
//   out = (T) v.  Implementation, L = 1: 2 passes over the data (norms, then
//   the update fused with the norms for the next one). L >= 2:
//   in coefficient space (common/select_iterative.h): one distance pass over
//   the n rows and v0, the L iterations on the (n+1) x (n+1) matrix, one
//   combination pass (2 passes whatever L; the same results as the direct
//   iteration to the rounding of the distance matrix); where the guard there
//   finds a norm too cancelled to trust, the direct iteration runs instead.
//
// No exception inside OpenMP regions: all scratch is allocated before them.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/blocks.h"
#include "common/select_iterative.h"
#include "cpu/cpu_backend.h"
#include "cpu/reduce.h"
#include "cpu/rowmean.h"

namespace pyagg {
namespace cpu {
namespace {

// Sub-chunk of a block whose double accumulators stay in L1 (a multiple of
// reduce::kLanes, so chunk-wise lane accumulation keeps the block kernels' order).
constexpr std::size_t kChunk = 512;
static_assert(kChunk % reduce::kLanes == 0, "chunk must be a multiple of the reduction lanes");
static_assert(kReduceBlock % kChunk == 0, "block must be a whole number of chunks");

inline std::int64_t as_i64(std::size_t v) { return static_cast<std::int64_t>(v); }

// Pass 0 on block [lo, lo+len): z[j] = init(j) on the block, then for every
// row the partial ||x_i - z||^2 into part[i] and its finiteness into fin[i].
template <typename T, typename Init>
inline void first_pass_block(const T* const* rows, std::size_t n, std::size_t lo, std::size_t len, double* z,
                             Init init, double* part, unsigned char* fin) {
  for (std::size_t j = lo; j < lo + len; ++j) z[j] = init(j);
  for (std::size_t i = 0; i < n; ++i) {
    bool ok = true;
    part[i] = reduce::block_sqdist_finite(rows[i] + lo, z + lo, len, &ok);
    fin[i] = ok ? 1 : 0;
  }
}

// Combines pass-0 partials: finite[i], and the finite rows in order.
inline std::vector<std::size_t> finite_rows(const unsigned char* fin_part, std::size_t n, std::size_t nb) {
  std::vector<std::size_t> live;
  for (std::size_t i = 0; i < n; ++i) {
    unsigned char ok = 1;
    for (std::size_t b = 0; b < nb; ++b) ok &= fin_part[b * n + i];
    if (ok) live.push_back(i);
  }
  return live;
}

}  // namespace

// --------------------------------------------------------- geometric-median ---
namespace {

// The direct iteration from z0 = start (n >= 1 values in double) or, when
// start is null, from the coordinate-wise median.
template <typename T>
void geometric_median_direct(const T* const* rows, std::size_t n, std::size_t d, double nu, std::int64_t max_iter,
                             double tol, const double* start, T* out) {
  const std::size_t nb = reduce::num_blocks(d);
  const int threads = reduce::threads_for(n * d);
  std::unique_ptr<double[]> z(new double[d]);  // first touched in pass 0, by the threads
  std::vector<double> dist_part(nb * n), delta_part(nb), znorm_part(nb), dist(n), w(n);
  std::vector<unsigned char> fin_part(nb * n);
  std::vector<double> chunk_acc(std::size_t(threads) * kChunk);
  double* zp = z.get();
  double* dp = dist_part.data();

  // z0: the given start, or the coordinate-wise median (into out), in double;
  // pass 0: ||x_i - z0||^2 partials and the finiteness of every row.
  if (!start) median<T>(rows, n, d, out);
  {
    unsigned char* fp = fin_part.data();
    const T* z0 = out;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (std::int64_t b = 0; b < as_i64(nb); ++b) {
      const std::size_t bb = std::size_t(b);
      if (start)
        first_pass_block(rows, n, reduce::block_begin(bb), reduce::block_len(bb, d), zp,
                         [start](std::size_t j) { return start[j]; }, dp + bb * n, fp + bb * n);
      else
        first_pass_block(rows, n, reduce::block_begin(bb), reduce::block_len(bb, d), zp,
                         [z0](std::size_t j) { return static_cast<double>(z0[j]); }, dp + bb * n, fp + bb * n);
    }
  }
  const std::vector<std::size_t> live = finite_rows(fin_part.data(), n, nb);
  const std::size_t nlive = live.size();
  std::vector<const T*> live_rows(nlive);
  for (std::size_t t = 0; t < nlive; ++t) {
    live_rows[t] = rows[live[t]];
    dist[t] = std::sqrt(reduce::combine_blocks(dp + live[t], nb, n));
  }
  const T* const* lr = live_rows.data();

  for (std::int64_t it = 0; it < max_iter && nlive > 0; ++it) {
    double wsum = 0.0;
    for (std::size_t t = 0; t < nlive; ++t) {
      w[t] = 1.0 / std::max(nu, dist[t]);
      wsum += w[t];
    }
    if (!(wsum > 0.0)) break;  // W == 0: z is kept
    const double* wp = w.data();
    double* delp = delta_part.data();
    double* znp = znorm_part.data();
    double* accs = chunk_acc.data();
#pragma omp parallel num_threads(threads)
    {
      double* acc = accs + std::size_t(reduce::thread_num()) * kChunk;
#pragma omp for schedule(static)
      for (std::int64_t b = 0; b < as_i64(nb); ++b) {
        const std::size_t bb = std::size_t(b);
        const std::size_t lo = reduce::block_begin(bb), len = reduce::block_len(bb, d);
        // z_new on the block, chunk by chunk, with the block partials of
        // ||z_new - z||^2 and ||z||^2 in the reduce.h lane order.
        double dlanes[reduce::kLanes] = {}, zlanes[reduce::kLanes] = {};
        for (std::size_t c0 = 0; c0 < len; c0 += kChunk) {
          const std::size_t cl = std::min(kChunk, len - c0);
          for (std::size_t l = 0; l < cl; ++l) acc[l] = 0.0;
          for (std::size_t t = 0; t < nlive; ++t) {
            const T* __restrict x = lr[t] + lo + c0;
            if (lo + c0 + 3 * kChunk <= d) reduce::prefetch_span_l2(x + 2 * kChunk, kChunk * sizeof(T));
            const double wt = wp[t];
            for (std::size_t l = 0; l < cl; ++l) acc[l] += wt * static_cast<double>(x[l]);
          }
          double* __restrict zz = zp + lo + c0;
          std::size_t l = 0;
          for (; l + reduce::kLanes <= cl; l += reduce::kLanes)
            for (std::size_t q = 0; q < reduce::kLanes; ++q) {
              const double znew = acc[l + q] / wsum;
              const double diff = znew - zz[l + q];
              dlanes[q] += diff * diff;
              zlanes[q] += zz[l + q] * zz[l + q];
              zz[l + q] = znew;
            }
          for (; l < cl; ++l) {
            const double znew = acc[l] / wsum;
            const double diff = znew - zz[l];
            dlanes[l % reduce::kLanes] += diff * diff;
            zlanes[l % reduce::kLanes] += zz[l] * zz[l];
            zz[l] = znew;
          }
        }
        delp[bb] = reduce::fold_lanes(dlanes);
        znp[bb] = reduce::fold_lanes(zlanes);
        // Distances of the finite rows to z_new on this block (still in cache).
        for (std::size_t t = 0; t < nlive; ++t) dp[bb * n + t] = reduce::block_sqdist(lr[t] + lo, zp + lo, len);
      }
    }
    const double delta = std::sqrt(reduce::combine_blocks(delp, nb));
    const double znorm = std::sqrt(reduce::combine_blocks(znp, nb));
    for (std::size_t t = 0; t < nlive; ++t) dist[t] = std::sqrt(reduce::combine_blocks(dp + t, nb, n));
    if (delta <= tol * znorm) break;
  }

#pragma omp parallel for schedule(static) num_threads(threads)
  for (std::int64_t j = 0; j < as_i64(d); ++j) out[j] = static_cast<T>(zp[j]);
}

}  // namespace

template <typename T>
void geometric_median(const T* const* rows, std::size_t n, std::size_t d, double nu, std::int64_t max_iter,
                      double tol, T* out) {
  geometric_median_direct<T>(rows, n, d, nu, max_iter, tol, nullptr, out);
}

// ------------------------------- geometric-median, mean start (coefficients) ---
template <typename T>
void geometric_median_mean_start(const T* const* rows, std::size_t n, std::size_t d, double nu,
                                 std::int64_t max_iter, double tol, T* out) {
  std::vector<double> D(n * n), sq(n);
  pairwise_sqdist_norms<T>(rows, n, d, D.data(), sq.data());  // pass 1 (finiteness: D's diagonal; norms too)
  // pairwise_sqdist's accuracy (distance.cpp): n <= kGramMinN the difference
  // form in lanes of T (exact_kernel_rel_bound: rigorous, from the kernel's
  // tile); above, the double Gram form (error ~ the summed norms times the
  // double rounding of a block's sums; a conservative figure).
  selection::DistanceAccuracy acc;
  constexpr bool is_float = std::is_same<T, float>::value;
  if (n > kGramMinN)
    acc.rel_norm = 1e-12;
  else
    acc.rel_pair = exact_kernel_rel_bound<T>(n, d);
  const double target = is_float ? 1e-5 : 1e-10;  // relative error allowed on ||x_t - z||^2
  bool trusted = true;
  selection::Combo c =
      selection::geometric_median_coefficients(D.data(), sq.data(), n, nu, max_iter, tol, &acc, target, &trusted);
  if (!trusted) {
    // The quadratic forms cancel (a far row with a small weight): D exactly
    // (one more pass, difference form in double), then the same iteration.
    pairwise_sqdist_exact_double<T>(rows, n, d, D.data());
    selection::DistanceAccuracy exact;
    exact.rel_pair = exact_kernel_rel_bound<double>(n, d);  // double lanes for both input types
    c = selection::geometric_median_coefficients(D.data(), sq.data(), n, nu, max_iter, tol, &exact, target,
                                                 &trusted);
  }
  if (!trusted) {
    // Even exact distances cancel beyond the target (rows ~1e9 times the
    // others): the direct iteration from the same start, the mean of the
    // finite rows (D's diagonal says which), one pass per iteration.
    std::vector<std::size_t> live;
    for (std::size_t i = 0; i < n; ++i)
      if (D[i * n + i] == 0.0) live.push_back(i);
    std::vector<double> z0(d, 0.0);
    const double cnt = static_cast<double>(live.size());  // not empty: some row's weight failed the check
#pragma omp parallel for schedule(static) num_threads(reduce::threads_for(n * d))
    for (std::int64_t j = 0; j < as_i64(d); ++j) {
      double acc = 0.0;
      for (std::size_t t : live) acc += static_cast<double>(rows[t][j]);
      z0[std::size_t(j)] = acc / cnt;
    }
    geometric_median_direct<T>(rows, n, d, nu, max_iter, tol, z0.data(), out);
    return;
  }
  // Pass 2: out = sum_t a[t] x_idx[t], in double, rows in index order.
  std::vector<const T*> lr(c.idx.size());
  for (std::size_t t = 0; t < lr.size(); ++t) lr[t] = rows[c.idx[t]];
  weighted_sum<T>(lr.data(), c.a.data(), lr.size(), d, 0.0, 1.0, out);
}

// -------------------------------------------------------- centered-clipping ---
namespace {

// From this many iterations on, the coefficient-space version (one distance
// pass over n+1 rows + one combination pass) reads G fewer times than the
// direct one (L + 1 passes; measured n = 20, d = 1e6, float32, 2 cores: L = 2
// direct 23-24 ms, coefficient space 12.5-16 ms; L = 1 direct 15 ms).
constexpr std::int64_t kCcCoefMinIters = 2;

// Centered clipping in coefficient space (common/select_iterative.h). Returns
// false, having written nothing, when the accuracy guard refuses (or v0 is
// non-finite, or no row is finite): the caller then runs the direct iteration.
template <typename T>
bool centered_clipping_coef(const T* const* rows, std::size_t n, std::size_t d, double tau, std::int64_t iters,
                            const T* state, T* out) {
  std::vector<T> zero;
  const T* v0 = state;
  if (!v0) {
    zero.assign(d, T(0));
    v0 = zero.data();
  }
  std::vector<const T*> ext(n + 1);
  ext[0] = v0;
  for (std::size_t i = 0; i < n; ++i) ext[i + 1] = rows[i];
  const std::size_t ne = n + 1;
  std::vector<double> D(ne * ne);
  pairwise_sqdist<T>(ext.data(), ne, d, D.data());  // pass 1 (also: finiteness, on the diagonal)
  if (D[0] != 0.0) return false;                    // non-finite start: direct iteration (NaN out)
  std::vector<std::size_t> live;
  for (std::size_t i = 0; i < n; ++i)
    if (D[(i + 1) * ne + (i + 1)] == 0.0) live.push_back(i);
  const std::size_t m = live.size();
  if (m == 0) return false;
  std::vector<std::size_t> pt(m + 1);  // point k of the coefficient space -> row of D
  pt[0] = 0;
  for (std::size_t t = 0; t < m; ++t) pt[t + 1] = live[t] + 1;
  std::vector<double> Dx((m + 1) * (m + 1));
  for (std::size_t k = 0; k <= m; ++k)
    for (std::size_t l = 0; l <= m; ++l) Dx[k * (m + 1) + l] = D[pt[k] * ne + pt[l]];
  // Relative accuracy of D's entries (distance.cpp): n+1 <= kGramMinN: the
  // difference form in lanes of T (exact_kernel_rel_bound); above, the Gram
  // path with its 2^-16 cancellation guard (~1e-8 float, ~1e-10 double).
  const bool gram = ne > kGramMinN;
  const double rel = gram ? (sizeof(T) == 4 ? 1e-8 : 1e-10) : exact_kernel_rel_bound<T>(ne, d);
  const double max_cancel = sizeof(T) == 4 ? 8.0 : 1e3;
  std::vector<double> w;
  if (!selection::centered_clipping_coefficients(Dx.data(), m, n, tau, iters, rel, max_cancel, &w)) return false;
  // Pass 2: out = w_0 v0 + sum_t w_{t+1} x_live[t], in double, rounded once.
  std::vector<const T*> pr;
  std::vector<double> a;
  if (state && w[0] != 0.0) {
    pr.push_back(state);
    a.push_back(w[0]);
  }
  for (std::size_t t = 0; t < m; ++t) {
    pr.push_back(rows[live[t]]);
    a.push_back(w[t + 1]);
  }
  weighted_sum<T>(pr.data(), a.data(), pr.size(), d, 0.0, 1.0, out);
  return true;
}

}  // namespace

// Centered clipping with v0 = 0 (no state) and L = 1, the defaults: the same
// arithmetic as the general loop below with v = 0 substituted (x - 0.0 is x,
// including -0.0; 0.0 + y is the general loop's v + y/n), without the d-sized
// v array (8 MB of double at d = 1e6, written, read and page-faulted per call).
// Pass 0: the rows' squared norms and finiteness; pass 1: the clipped sum.
template <typename T>
void centered_clipping_once_from_zero(const T* const* rows, std::size_t n, std::size_t d, double tau, T* out) {
  std::vector<double> sq(n), c;
  std::vector<unsigned char> fin(n);
  reduce::row_sqnorms<T>(rows, n, d, sq.data(), fin.data());  // pass 0
  std::vector<const T*> live_rows;
  for (std::size_t i = 0; i < n; ++i) {
    if (!fin[i]) continue;
    live_rows.push_back(rows[i]);
    const double nrm = std::sqrt(sq[i]);
    c.push_back(nrm == 0.0 ? 1.0 : std::min(1.0, tau / nrm));
  }
  const std::size_t nlive = live_rows.size();
  // Pass 1: out = T(0.0 + (1/n) * sum_t c_t x_t) (the general loop's v + acc/n, v = 0).
  weighted_sum<T>(live_rows.data(), c.data(), nlive, d, 1.0 / static_cast<double>(n), 1.0, out);
}

template <typename T>
void centered_clipping(const T* const* rows, std::size_t n, std::size_t d, double tau, std::int64_t iters,
                       const T* state, T* out) {
  if (iters >= kCcCoefMinIters && centered_clipping_coef(rows, n, d, tau, iters, state, out)) return;
  if (!state && iters == 1) return centered_clipping_once_from_zero(rows, n, d, tau, out);
  const std::size_t nb = reduce::num_blocks(d);
  const int threads = reduce::threads_for(n * d);
  std::unique_ptr<double[]> v(new double[d]);  // first touched in pass 0, by the threads
  std::vector<double> norm_part(nb * n), c(n);
  std::vector<unsigned char> fin_part(nb * n);
  std::vector<double> chunk_acc(std::size_t(threads) * kChunk);
  double* vp = v.get();
  double* np_ = norm_part.data();

  // Pass 0: v0 = state (or 0), ||x_i - v0||^2 partials, finiteness of each row.
  {
    unsigned char* fp = fin_part.data();
#pragma omp parallel for schedule(static) num_threads(threads)
    for (std::int64_t b = 0; b < as_i64(nb); ++b) {
      const std::size_t bb = std::size_t(b);
      first_pass_block(rows, n, reduce::block_begin(bb), reduce::block_len(bb, d), vp,
                       [state](std::size_t j) { return state ? static_cast<double>(state[j]) : 0.0; },
                       np_ + bb * n, fp + bb * n);
    }
  }
  const std::vector<std::size_t> live = finite_rows(fin_part.data(), n, nb);
  const std::size_t nlive = live.size();
  std::vector<const T*> live_rows(nlive);
  for (std::size_t t = 0; t < nlive; ++t) live_rows[t] = rows[live[t]];
  const T* const* lr = live_rows.data();
  const double inv_n = 1.0 / static_cast<double>(n);  // the spec's (1/n) * sum
  bool written = false;

  for (std::int64_t it = 0; it < iters && nlive > 0; ++it) {
    // row t of the partials: live row t (pass 0 wrote them by row index)
    for (std::size_t t = 0; t < nlive; ++t) {
      const std::size_t col = it == 0 ? live[t] : t;
      const double nrm = std::sqrt(reduce::combine_blocks(np_ + col, nb, n));
      c[t] = nrm == 0.0 ? 1.0 : std::min(1.0, tau / nrm);
    }
    const double* cp = c.data();
    const bool last = it + 1 == iters;
    double* accs = chunk_acc.data();
#pragma omp parallel num_threads(threads)
    {
      double* acc = accs + std::size_t(reduce::thread_num()) * kChunk;
#pragma omp for schedule(static)
      for (std::int64_t b = 0; b < as_i64(nb); ++b) {
        const std::size_t bb = std::size_t(b);
        const std::size_t lo = reduce::block_begin(bb), len = reduce::block_len(bb, d);
        for (std::size_t c0 = 0; c0 < len; c0 += kChunk) {
          const std::size_t cl = std::min(kChunk, len - c0);
          double* __restrict vv = vp + lo + c0;
          for (std::size_t l = 0; l < cl; ++l) acc[l] = 0.0;
          for (std::size_t t = 0; t < nlive; ++t) {
            const T* __restrict x = lr[t] + lo + c0;
            if (lo + c0 + 3 * kChunk <= d) reduce::prefetch_span_l2(x + 2 * kChunk, kChunk * sizeof(T));
            const double ct = cp[t];
            for (std::size_t l = 0; l < cl; ++l) acc[l] += ct * (static_cast<double>(x[l]) - vv[l]);
          }
          if (last) {
            T* __restrict o = out + lo + c0;
            for (std::size_t l = 0; l < cl; ++l) o[l] = static_cast<T>(vv[l] + inv_n * acc[l]);
          } else {
            for (std::size_t l = 0; l < cl; ++l) vv[l] += inv_n * acc[l];
          }
        }
        if (!last)
          for (std::size_t t = 0; t < nlive; ++t) np_[bb * n + t] = reduce::block_sqdist(lr[t] + lo, vp + lo, len);
      }
    }
    written = last;
  }

  if (!written) {  // every row non-finite: v = v0
#pragma omp parallel for schedule(static) num_threads(threads)
    for (std::int64_t j = 0; j < as_i64(d); ++j) out[j] = static_cast<T>(vp[j]);
  }
}

template void geometric_median_mean_start<float>(const float* const*, std::size_t, std::size_t, double, std::int64_t,
                                                 double, float*);
template void geometric_median_mean_start<double>(const double* const*, std::size_t, std::size_t, double,
                                                  std::int64_t, double, double*);
template void geometric_median<float>(const float* const* rows, std::size_t n, std::size_t d, double nu,
                                      std::int64_t max_iter, double tol, float* out);
template void geometric_median<double>(const double* const* rows, std::size_t n, std::size_t d, double nu,
                                       std::int64_t max_iter, double tol, double* out);
template void centered_clipping<float>(const float* const* rows, std::size_t n, std::size_t d, double tau,
                                       std::int64_t iters, const float* state, float* out);
template void centered_clipping<double>(const double* const* rows, std::size_t n, std::size_t d, double tau,
                                        std::int64_t iters, const double* state, double* out);

}  // namespace cpu
}  // namespace pyagg
