// pyagg engine — host-side logic of dnc, clipped-clustering, smea, caf and
// zeroing (shared/spec/rules_next.md), shared by the CPU and CUDA backends.
//
// Internal header in engine/src/common (the directory both backends include):
// engine/src/cpu/next.cpp, engine/cuda/backend.cu and tests/cpp/test_next.cpp.
// Like select_distance.h, nothing here touches the
// gradient data: every rule is a function of
//   - the per-row statistics of one pass over G (RowStat: sum of squares, L1
//     and L-inf norms, finiteness), and
//   - the n x n squared-distance matrix D of the one distance pass
//     (cpu::pairwise_sqdist, or the CUDA distance kernel), on all
//     coordinates, or (DnC with b < d) on a sampled subset of coordinates,
// and returns a Combo: out = (sum_t a[t] * x_{idx[t]}) / den, which the
// backend evaluates in one more pass over G. No element type, no OpenMP
// (except smea's subset search, whose result does not depend on the thread
// count).
//
// Gram matrices are never formed from the data: the Gram matrix of rows
// centered at their mean is -1/2 J D J (J = I - 11^T/m, classical MDS), exact
// in real arithmetic, and D comes from the exact difference form, so large,
// nearly equal rows do not cancel. Bitwise-equal rows have bitwise-equal rows
// of D, hence of K, of every projection and weight (all sums below run in a
// fixed index order, symmetric expressions are written symmetrically).
// Allocation may throw std::bad_alloc: call outside OpenMP regions.
#pragma once

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <unordered_set>
#include <vector>

#include "common/splitmix.h"
#include "pyagg/rules.h"

namespace pyagg {
namespace selection {

// Statistics of one row, from one pass over it (float64 accumulation).
struct RowStat {
  double sumsq = 0;  // sum of x^2
  double l1 = 0;     // sum of |x|
  double linf = 0;   // max |x|
  bool finite = true;  // every entry finite
};
// Usable row (rules_next.md): every entry finite and a finite sum of squares.
inline bool usable(const RowStat& s) { return s.finite && std::isfinite(s.sumsq); }

// out = (sum_t a[t] * x_{idx[t]}) / den, idx increasing; summed in double in
// the order of idx, divided once, rounded to T once. `nan`: the output is NaN
// (no usable row); idx empty and !nan: the output is 0.
struct Combo {
  std::vector<std::size_t> idx;
  std::vector<double> a;
  double den = 1.0;
  bool nan = false;
};

inline Combo combo_nan() {
  Combo c;
  c.nan = true;
  return c;
}
inline Combo combo_mean(const std::vector<std::size_t>& idx) {
  Combo c;
  c.idx = idx;
  c.a.assign(idx.size(), 1.0);
  c.den = double(idx.size());
  return c;
}

// ---- PRNG (rules_next.md "PRNG") -------------------------------------------
using Stream = SplitMix64;  // common/splitmix.h
// n values 2U - 1, in row order.
inline std::vector<double> start_vector(Stream& rng, std::size_t n) {
  std::vector<double> s(n);
  for (std::size_t i = 0; i < n; ++i) s[i] = 2.0 * rng.uniform() - 1.0;
  return s;
}
// Floyd's algorithm: a uniform b-subset of [0, d) (b < d), b draws, sorted.
// Draw j (j = d - b .. d - 1) takes t = next() % (j + 1), or j itself when t
// is already taken (j never is: every earlier value is below j). Two ways to
// remember what is taken, the same subset and the same draws:
//  - a bitmap of d bits, read in order at the end (no sort): when d / 64 <=
//    kFloydBitmapWords * b, i.e. the scan costs at most that many words per
//    sampled coordinate (dnc's default b = 1e4: d <= 1.6e7 coordinates);
//  - a hash set and a sort of the b values, for sparser samples.
// (dnc at n = 20, b = 1e4 took 0.26x its time at d = 1e5 and 0.77x at d =
// 1e6 and 1e7 when the bitmap replaced the hash set: the set's allocations and
// the sort ran serially, the other threads waiting.)
constexpr std::size_t kFloydBitmapWords = 25;
inline std::vector<std::size_t> floyd_subset_bitmap(Stream& rng, std::size_t d, std::size_t b) {
  std::vector<std::uint64_t> taken((d + 63) / 64, 0);
  for (std::size_t j = d - b; j < d; ++j) {
    const std::size_t t = std::size_t(rng.next() % std::uint64_t(j + 1));
    const std::size_t v = ((taken[t / 64] >> (t % 64)) & 1) ? j : t;
    taken[v / 64] |= std::uint64_t(1) << (v % 64);
  }
  std::vector<std::size_t> out;
  out.reserve(b);
  for (std::size_t w = 0; w < taken.size(); ++w)
    for (std::uint64_t x = taken[w]; x; x &= x - 1) out.push_back(w * 64 + std::size_t(__builtin_ctzll(x)));
  return out;
}
inline std::vector<std::size_t> floyd_subset_hashed(Stream& rng, std::size_t d, std::size_t b) {
  std::unordered_set<std::size_t> in;
  in.reserve(2 * b);
  std::vector<std::size_t> out;
  out.reserve(b);
  for (std::size_t j = d - b; j < d; ++j) {
    const std::size_t t = std::size_t(rng.next() % std::uint64_t(j + 1));
    const std::size_t v = in.count(t) ? j : t;
    in.insert(v);
    out.push_back(v);
  }
  std::sort(out.begin(), out.end());
  return out;
}
inline std::vector<std::size_t> floyd_subset(Stream& rng, std::size_t d, std::size_t b) {
  return d / 64 <= kFloydBitmapWords * b ? floyd_subset_bitmap(rng, d, b) : floyd_subset_hashed(rng, d, b);
}

// ---- Gram matrices and the power method ------------------------------------
// Gram matrix (m x m, m = |R|) of the rows R centered at their mean, from the
// squared distances: K = -1/2 J D_RR J.
inline std::vector<double> centered_gram(const double* D, std::size_t n, const std::vector<std::size_t>& R) {
  const std::size_t m = R.size();
  std::vector<double> r(m), K(m * m);
  double t = 0;
  for (std::size_t a = 0; a < m; ++a) {
    double s = 0;
    for (std::size_t b = 0; b < m; ++b) s += D[R[a] * n + R[b]];
    r[a] = s / double(m);
  }
  for (std::size_t a = 0; a < m; ++a) t += r[a];
  t /= double(m);
  for (std::size_t a = 0; a < m; ++a)
    for (std::size_t b = 0; b < m; ++b) K[a * m + b] = -0.5 * ((D[R[a] * n + R[b]] - (r[a] + r[b])) + t);
  return K;
}

inline void matvec(const std::vector<double>& M, std::size_t m, const std::vector<double>& u, std::vector<double>* w) {
  w->assign(m, 0.0);
  for (std::size_t a = 0; a < m; ++a) {
    double s = 0;
    const double* Ma = M.data() + a * m;
    for (std::size_t b = 0; b < m; ++b) s += Ma[b] * u[b];
    (*w)[a] = s;
  }
}

struct Eigen {
  double lambda = 0;      // u^T M u (0 when M = 0)
  bool direction = false; // false: M = 0, no direction
  std::vector<double> u;  // unit vector
  std::vector<double> Mu; // M u, for the final u
};

// POWER(M, s, T) of rules_next.md.
inline Eigen power_method(const std::vector<double>& M, std::size_t m, const std::vector<double>& s, std::int64_t T) {
  Eigen e;
  bool zero = true;
  for (std::size_t a = 0; a < m; ++a) zero = zero && M[a * m + a] == 0.0;
  if (zero || m == 0) return e;
  e.direction = true;
  e.u = s;
  std::vector<double> w;
  matvec(M, m, e.u, &w);
  bool wzero = true;
  for (double v : w) wzero = wzero && v == 0.0;
  if (wzero) {
    std::size_t j = 0;
    for (std::size_t a = 1; a < m; ++a)
      if (M[a * m + a] > M[j * m + j]) j = a;
    e.u.assign(m, 0.0);
    e.u[j] = 1.0;
    matvec(M, m, e.u, &w);
  }
  for (std::int64_t t = 0; t < T; ++t) {
    if (t > 0) matvec(M, m, e.u, &w);
    double nn = 0;
    for (double v : w) nn += v * v;
    const double nrm = std::sqrt(nn);
    if (!(nrm > 0) || !std::isfinite(nrm)) break;  // cannot happen for a PSD M != 0 in exact arithmetic
    for (std::size_t a = 0; a < m; ++a) e.u[a] = w[a] / nrm;
  }
  matvec(M, m, e.u, &e.Mu);
  double l = 0;
  for (std::size_t a = 0; a < m; ++a) l += e.u[a] * e.Mu[a];
  e.lambda = l;
  return e;
}

// Largest eigenvalue of a symmetric m x m matrix, cyclic Jacobi (relative
// accuracy ~1e-15 of the matrix norm); the cross-check of tridiag_max_eig in
// tests/cpp/test_next.cpp. A is overwritten.
inline double jacobi_max_eig(std::vector<double>& A, std::size_t m) {
  if (m == 0) return 0.0;
  if (m == 1) return A[0];
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0, tot = 0;
    for (std::size_t p = 0; p < m; ++p)
      for (std::size_t q = 0; q < m; ++q) {
        const double v = A[p * m + q] * A[p * m + q];
        tot += v;
        if (p != q) off += v;
      }
    if (off <= 1e-32 * tot || off == 0) break;
    for (std::size_t p = 0; p + 1 < m; ++p)
      for (std::size_t q = p + 1; q < m; ++q) {
        const double apq = A[p * m + q];
        if (apq == 0.0) continue;
        const double app = A[p * m + p], aqq = A[q * m + q];
        const double theta = (aqq - app) / (2.0 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
        for (std::size_t k = 0; k < m; ++k) {
          const double akp = A[k * m + p], akq = A[k * m + q];
          A[k * m + p] = c * akp - s * akq;
          A[k * m + q] = s * akp + c * akq;
        }
        for (std::size_t k = 0; k < m; ++k) {
          const double apk = A[p * m + k], aqk = A[q * m + k];
          A[p * m + k] = c * apk - s * aqk;
          A[q * m + k] = s * apk + c * aqk;
        }
        A[p * m + q] = A[q * m + p] = 0.0;
      }
  }
  double mx = A[0];
  for (std::size_t p = 1; p < m; ++p) mx = std::max(mx, A[p * m + p]);
  return mx;
}

// Largest eigenvalue of a symmetric m x m matrix: Householder reduction to
// tridiagonal form (backward stable), then bisection with Sturm counts to
// ~1e-15 of the spectral radius. About 10x cheaper than Jacobi at m = 16.
// A is overwritten.
inline double tridiag_max_eig(std::vector<double>& A, std::size_t m) {
  if (m == 0) return 0.0;
  if (m == 1) return A[0];
  std::vector<double> v(m), p(m), w(m);
  for (std::size_t k = 0; k + 2 < m; ++k) {
    const std::size_t t = m - k - 1;  // length of the column below the diagonal
    double xx = 0;
    for (std::size_t i = 0; i < t; ++i) xx += A[(k + 1 + i) * m + k] * A[(k + 1 + i) * m + k];
    if (xx == 0) continue;
    const double x0 = A[(k + 1) * m + k];
    const double alpha = x0 >= 0 ? -std::sqrt(xx) : std::sqrt(xx);
    for (std::size_t i = 0; i < t; ++i) v[i] = A[(k + 1 + i) * m + k];
    v[0] -= alpha;
    double vtv = 0;
    for (std::size_t i = 0; i < t; ++i) vtv += v[i] * v[i];
    if (vtv == 0) continue;
    const double beta = 2.0 / vtv;
    double vp = 0;
    for (std::size_t i = 0; i < t; ++i) {
      double sum = 0;
      for (std::size_t j = 0; j < t; ++j) sum += A[(k + 1 + i) * m + (k + 1 + j)] * v[j];
      p[i] = beta * sum;
      vp += v[i] * p[i];
    }
    const double K = beta * vp / 2.0;
    for (std::size_t i = 0; i < t; ++i) w[i] = p[i] - K * v[i];
    for (std::size_t i = 0; i < t; ++i)
      for (std::size_t j = 0; j < t; ++j) A[(k + 1 + i) * m + (k + 1 + j)] -= v[i] * w[j] + w[i] * v[j];
    A[(k + 1) * m + k] = A[k * m + (k + 1)] = alpha;
  }
  std::vector<double> dg(m), e2(m, 0.0);
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (std::size_t i = 0; i < m; ++i) {
    dg[i] = A[i * m + i];
    const double el = i > 0 ? std::fabs(A[i * m + i - 1]) : 0.0, er = i + 1 < m ? std::fabs(A[(i + 1) * m + i]) : 0.0;
    if (i > 0) e2[i] = el * el;
    lo = std::min(lo, dg[i] - el - er);
    hi = std::max(hi, dg[i] + el + er);
  }
  const double scale = std::max(std::fabs(lo), std::fabs(hi));
  if (scale == 0) return 0.0;
  const double tiny = scale * 1e-300 + std::numeric_limits<double>::min();
  // count(x): eigenvalues < x (Sturm sequence of the LDL^T pivots).
  auto count = [&](double x) {
    std::size_t c = 0;
    double q = dg[0] - x;
    for (std::size_t i = 0;;) {
      if (q == 0) q = -tiny;
      if (q < 0) ++c;
      if (++i == m) break;
      q = (dg[i] - x) - e2[i] / q;
    }
    return c;
  };
  for (int it = 0; it < 200 && hi - lo > 1e-15 * scale; ++it) {
    const double mid = lo + (hi - lo) / 2;
    if (mid <= lo || mid >= hi) break;
    if (count(mid) == m)
      hi = mid;
    else
      lo = mid;
  }
  return hi;
}

inline std::vector<std::size_t> usable_rows(const std::vector<RowStat>& st) {
  std::vector<std::size_t> R;
  for (std::size_t i = 0; i < st.size(); ++i)
    if (usable(st[i])) R.push_back(i);
  return R;
}

// ---- dnc --------------------------------------------------------------------
// dnc's draws from its stream, in their order: the start vector (n values),
// then one sample of b coordinates per iteration. They depend on the seed
// only, so a backend may draw the samples ahead (the CPU copies the rows'
// values on them during its row statistics pass).
struct DncDraws {
  Stream rng;
  std::vector<double> start;
  DncDraws(std::uint64_t seed, std::size_t n) : rng{seed}, start(start_vector(rng, n)) {}
  std::vector<std::size_t> sample(std::size_t d, std::size_t b) { return floyd_subset(rng, d, b); }
};

// dist(coords, D): D (n*n) of the n rows on the coordinates `coords` (sorted;
// nullptr: all d coordinates). samples (b < d; may be null): the r.niters
// samples already drawn, in order, by a DncDraws of seed r.seed: iteration k
// passes &(*samples)[k] to dist instead of drawing it.
template <typename DistFn>
Combo dnc(const RuleConfig& r, std::size_t n, std::size_t d, const std::vector<RowStat>& st, DistFn&& dist,
          const std::vector<std::vector<std::size_t>>* samples = nullptr) {
  DncDraws draws(r.seed, n);
  const std::vector<double>& s = draws.start;
  const std::vector<std::size_t> R = usable_rows(st);
  if (R.empty()) return combo_nan();
  const std::size_t m = R.size();
  const std::size_t removed = std::size_t(std::floor(r.filter_frac * double(r.f)));
  const std::size_t keep = std::min(n - removed, m);
  std::vector<double> sR(m);
  for (std::size_t a = 0; a < m; ++a) sR[a] = s[R[a]];
  const bool all = std::size_t(r.sub_dim) >= d;
  std::vector<double> D;
  std::vector<unsigned char> in(n, 0);
  bool have = false;
  for (std::int64_t k = 0; k < r.niters; ++k) {
    if (all) {
      if (k == 0) dist(nullptr, &D);
    } else {
      if (samples) {
        dist(&(*samples)[std::size_t(k)], &D);
      } else {
        const auto coords = draws.sample(d, std::size_t(r.sub_dim));
        dist(&coords, &D);
      }
    }
    const auto K = centered_gram(D.data(), n, R);
    const Eigen e = power_method(K, m, sR, r.power_iters);
    std::vector<double> score(m, 0.0);
    if (e.direction && e.lambda > 0)
      for (std::size_t a = 0; a < m; ++a) score[a] = (e.Mu[a] * e.Mu[a]) / e.lambda;
    std::vector<std::size_t> order(m);
    for (std::size_t a = 0; a < m; ++a) order[a] = a;
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t x, std::size_t y) { return score[x] < score[y]; });
    std::vector<unsigned char> Ik(n, 0);
    for (std::size_t t = 0; t < keep; ++t) Ik[R[order[t]]] = 1;
    if (!have) {
      in = Ik;
      have = true;
    } else {
      bool nonempty = false;
      for (std::size_t i = 0; i < n; ++i) nonempty = nonempty || (in[i] && Ik[i]);
      if (nonempty)
        for (std::size_t i = 0; i < n; ++i) in[i] = in[i] && Ik[i];
    }
  }
  std::vector<std::size_t> sel;
  for (std::size_t i = 0; i < n; ++i)
    if (in[i]) sel.push_back(i);
  return combo_mean(sel);
}

// ---- clipped-clustering -----------------------------------------------------
inline double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t k = v.size();
  return k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2.0;
}

// D: squared distances on all coordinates.
inline Combo clipped_clustering(const RuleConfig& r, const double* D, std::size_t n, const std::vector<RowStat>& st) {
  const std::vector<std::size_t> U = usable_rows(st);
  const std::size_t m = U.size();
  std::vector<double> nrm(m);
  for (std::size_t a = 0; a < m; ++a) nrm[a] = std::sqrt(st[U[a]].sumsq);
  if (m == 0) {
    return combo_nan();
  }
  double tau;
  if (r.history) {
    std::lock_guard<std::mutex> lock(r.history->mu);
    r.history->norms.insert(r.history->norms.end(), nrm.begin(), nrm.end());
    tau = median_of(r.history->norms);
  } else {
    tau = median_of(nrm);
  }
  tau = std::min(tau, r.max_tau);
  std::vector<double> scale(m, 1.0);
  std::vector<unsigned char> yzero(m, 0);
  for (std::size_t a = 0; a < m; ++a) {
    if (nrm[a] > tau) scale[a] = tau / nrm[a];
    yzero[a] = nrm[a] == 0.0 || (nrm[a] > tau && tau == 0.0);
  }
  // Cosine distances of the clipped rows (clipping does not change a nonzero
  // row's direction): 1 - cos = (D - (|a| - |b|)^2) / (2 |a| |b|).
  std::vector<double> C(m * m, 0.0);
  for (std::size_t a = 0; a < m; ++a)
    for (std::size_t b = 0; b < m; ++b) {
      if (a == b) continue;
      double v;
      if (yzero[a] || yzero[b]) {
        v = 1.0;
      } else {
        const double dn = nrm[a] - nrm[b];
        v = (D[U[a] * n + U[b]] - dn * dn) / (2.0 * (nrm[a] * nrm[b]));
        if (!(v >= 0)) v = std::isnan(v) ? 2.0 : 0.0;
        v = std::min(v, 2.0);
      }
      C[a * m + b] = v;
    }
  // Agglomerative clustering down to 2 clusters. Cluster k is identified by
  // its lowest member (clusters are kept in the order of that member); L holds
  // the sum (average) or the minimum (single) of C between two clusters.
  std::vector<std::vector<std::size_t>> cl(m);
  for (std::size_t a = 0; a < m; ++a) cl[a] = {a};
  std::vector<double> L = C;  // L[p*m+q] for live clusters p, q (indices of their lowest member)
  std::vector<unsigned char> live(m, 1);
  const bool single = r.linkage == Linkage::kSingle;
  std::size_t nlive = m;
  while (nlive > 2) {
    std::size_t bp = m, bq = m;
    double best = std::numeric_limits<double>::infinity();
    for (std::size_t p = 0; p < m; ++p) {
      if (!live[p]) continue;
      for (std::size_t q = p + 1; q < m; ++q) {
        if (!live[q]) continue;
        const double l = single ? L[p * m + q] : L[p * m + q] / (double(cl[p].size()) * double(cl[q].size()));
        if (bp == m || l < best) {
          best = l;
          bp = p;
          bq = q;
        }
      }
    }
    // merge bq into bp (bp < bq: bp stays the lowest member)
    for (std::size_t k = 0; k < m; ++k) {
      if (!live[k] || k == bp || k == bq) continue;
      const double v = single ? std::min(L[bp * m + k], L[bq * m + k]) : L[bp * m + k] + L[bq * m + k];
      L[bp * m + k] = L[k * m + bp] = v;
    }
    cl[bp].insert(cl[bp].end(), cl[bq].begin(), cl[bq].end());
    std::sort(cl[bp].begin(), cl[bp].end());
    live[bq] = 0;
    --nlive;
  }
  // The larger cluster; equal sizes: the one holding the lowest row (cluster 0).
  std::size_t pick = m;
  for (std::size_t p = 0; p < m; ++p)
    if (live[p] && (pick == m || cl[p].size() > cl[pick].size())) pick = p;
  Combo c;
  for (std::size_t a : cl[pick]) {
    c.idx.push_back(U[a]);
    c.a.push_back(scale[a]);
  }
  c.den = double(cl[pick].size());
  return c;
}

// ---- smea -------------------------------------------------------------------
inline std::uint64_t binom_u64(std::uint64_t a, std::uint64_t b) {
  if (b > a) return 0;
  b = std::min(b, a - b);
  unsigned __int128 r = 1;
  for (std::uint64_t i = 0; i < b; ++i) r = r * (a - i) / (i + 1);
  return r > ~std::uint64_t(0) ? ~std::uint64_t(0) : std::uint64_t(r);
}

// The lexicographic combination of rank `rank` of s out of n.
inline void unrank_combination(std::uint64_t rank, std::size_t n, std::size_t s, std::size_t* c) {
  std::size_t v = 0;
  for (std::size_t t = 0; t < s; ++t) {
    for (;; ++v) {
      const std::uint64_t cnt = binom_u64(n - 1 - v, s - 1 - t);
      if (rank < cnt) break;
      rank -= cnt;
    }
    c[t] = v++;
  }
}
inline bool next_combination(std::size_t* c, std::size_t n, std::size_t s) {
  std::size_t t = s;
  while (t > 0 && c[t - 1] == n - s + t - 1) --t;
  if (t == 0) return false;
  ++c[t - 1];
  for (std::size_t u = t; u < s; ++u) c[u] = c[u - 1] + 1;
  return true;
}

// B = (1/m) H K_S H (K: Gram of the usable rows centered at their mean;
// pos[i]: row i's index in K); returns B's largest diagonal entry, a lower
// bound of its largest eigenvalue (e_a^T B e_a).
inline double smea_matrix(const std::vector<double>& K, std::size_t mk, const std::vector<std::size_t>& pos,
                          const std::size_t* S, std::size_t m, std::vector<double>& B, std::vector<double>& rho) {
  B.resize(m * m);
  rho.resize(m);
  double t = 0;
  for (std::size_t a = 0; a < m; ++a) {
    double s = 0;
    for (std::size_t b = 0; b < m; ++b) s += K[pos[S[a]] * mk + pos[S[b]]];
    rho[a] = s / double(m);
  }
  for (std::size_t a = 0; a < m; ++a) t += rho[a];
  t /= double(m);
  double diag = -std::numeric_limits<double>::infinity();
  for (std::size_t a = 0; a < m; ++a)
    for (std::size_t b = 0; b < m; ++b)
      B[a * m + b] = ((K[pos[S[a]] * mk + pos[S[b]]] - (rho[a] + rho[b])) + t) / double(m);
  for (std::size_t a = 0; a < m; ++a) diag = std::max(diag, B[a * m + a]);
  return diag;
}

// lambda(S): B's largest eigenvalue, clamped at 0.
inline double smea_lambda(const std::vector<double>& K, std::size_t mk, const std::vector<std::size_t>& pos,
                          const std::size_t* S, std::size_t m, std::vector<double>& B, std::vector<double>& rho) {
  smea_matrix(K, mk, pos, S, m, B, rho);
  return std::max(0.0, tridiag_max_eig(B, m));
}

// Whether a subset whose B has largest diagonal entry `diag` can be skipped
// against the eigenvalue `best` of a subset already known: its eigenvalue is
// at least diag, and the computed one (tridiag_max_eig: Householder, backward
// stable, then bisection to 1e-15 of the Gershgorin radius <= m max B_aa;
// ~1e-13 m max B_aa in all) at least diag (1 - 1e-10 m): above best, it can
// neither be the minimum nor tie it.
inline bool smea_skip(double diag, std::size_t m, double best) {
  return diag * (1.0 - 1e-10 * double(m)) > best;
}

// Branch and bound over the C(n, m) subsets: a subset is skipped (smea_skip)
// when its B's diagonal already exceeds the best eigenvalue its chunk has
// seen, or that of a first candidate evaluated before the scan: the m usable
// rows nearest their mean (K's diagonal, ties by index). A skipped subset is
// one the full scan would not pick, and the candidate is still evaluated in
// its turn: the result is the full scan's. Byzantine rows far from the others
// put a large entry on the diagonal of every subset that holds one (n = 20,
// f = 4: 4844 of the 4845 subsets hold one of four such rows).
inline Combo smea(const RuleConfig& r, const double* D, std::size_t n, const std::vector<RowStat>& st) {
  const std::size_t f = r.f, m = n - f;
  const std::vector<std::size_t> R = usable_rows(st);
  std::vector<std::size_t> pos(n, n);
  for (std::size_t a = 0; a < R.size(); ++a) pos[R[a]] = a;
  const std::vector<double> K = R.empty() ? std::vector<double>() : centered_gram(D, n, R);
  const std::size_t mk = R.size();
  const std::uint64_t total = binom_u64(n, m);
  double bound = std::numeric_limits<double>::infinity();
  if (mk >= m && m > 0) {
    std::vector<std::size_t> near(mk);
    for (std::size_t a = 0; a < mk; ++a) near[a] = a;
    std::stable_sort(near.begin(), near.end(),
                     [&](std::size_t a, std::size_t b) { return K[a * mk + a] < K[b * mk + b]; });
    std::vector<std::size_t> cand(m);
    for (std::size_t t = 0; t < m; ++t) cand[t] = R[near[t]];
    std::sort(cand.begin(), cand.end());
    std::vector<double> B, rho;
    bound = smea_lambda(K, mk, pos, cand.data(), m, B, rho);
  }
  // Fixed chunks of consecutive ranks (independent of the thread count); each
  // keeps its first minimum, chunks are combined in rank order: the result is
  // the first minimum in lexicographic order, as a sequential scan gives.
  const std::uint64_t nchunks = std::min<std::uint64_t>(total, 256);
  std::vector<double> best(nchunks, std::numeric_limits<double>::infinity());
  std::vector<std::uint64_t> best_rank(nchunks, ~std::uint64_t(0));
  std::vector<std::vector<std::size_t>> best_set(nchunks);
#pragma omp parallel for schedule(dynamic, 1)
  for (std::int64_t ch = 0; ch < std::int64_t(nchunks); ++ch) {
    const std::uint64_t r0 = total / nchunks * std::uint64_t(ch) + std::min<std::uint64_t>(ch, total % nchunks);
    const std::uint64_t cnt = total / nchunks + (std::uint64_t(ch) < total % nchunks ? 1 : 0);
    std::vector<std::size_t> c(m);
    std::vector<double> B, rho;
    unrank_combination(r0, n, m, c.data());
    for (std::uint64_t q = 0; q < cnt; ++q) {
      bool ok = true;
      for (std::size_t t = 0; t < m && ok; ++t) ok = pos[c[t]] < n;
      const bool pruned =
          ok && smea_skip(smea_matrix(K, mk, pos, c.data(), m, B, rho), m, std::min(bound, best[ch]));
      const double lam =
          ok && !pruned ? std::max(0.0, tridiag_max_eig(B, m)) : std::numeric_limits<double>::infinity();
      if (!pruned && (best_rank[ch] == ~std::uint64_t(0) || lam < best[ch])) {
        best[ch] = lam;
        best_rank[ch] = r0 + q;
        best_set[ch] = c;
      }
      if (q + 1 < cnt) next_combination(c.data(), n, m);
    }
  }
  std::size_t bc = 0;
  for (std::size_t ch = 1; ch < nchunks; ++ch)
    if (best[ch] < best[bc]) bc = ch;
  return combo_mean(best_set[bc]);
}

// ---- caf --------------------------------------------------------------------
inline Combo caf(const RuleConfig& r, const double* D, std::size_t n, const std::vector<RowStat>& st) {
  Stream rng{r.seed};
  const std::vector<double> s = start_vector(rng, n);
  const std::vector<std::size_t> R = usable_rows(st);
  if (R.empty()) return combo_nan();
  const std::size_t m = R.size();
  std::vector<double> c(m, 1.0), best_c;
  double best_w = 0, best = std::numeric_limits<double>::infinity();
  const double limit = double(n) - 2.0 * double(r.f);
  for (std::size_t iter = 0; iter <= n; ++iter) {
    double W = 0;
    for (std::size_t a = 0; a < m; ++a) W += c[a];
    if (!(W > limit)) break;
    std::vector<std::size_t> A;
    for (std::size_t a = 0; a < m; ++a)
      if (c[a] > 0) A.push_back(a);
    const std::size_t k = A.size();
    std::vector<double> p(k);
    for (std::size_t x = 0; x < k; ++x) p[x] = c[A[x]] / W;
    // Gram of the alive rows centered at their weighted mean, from D:
    // -1/2 (D - r1^T - 1r^T + t), r = D p, t = p^T D p. (The spec's update of
    // a Gram matrix K0 centered once at the plain mean is the same matrix in
    // exact arithmetic, but cancels ~(shift of the mean)^2 once far rows are
    // zeroed; this form only sees the alive rows' own spread.)
    std::vector<double> rw(k);
    for (std::size_t x = 0; x < k; ++x) {
      double sum = 0;
      for (std::size_t y = 0; y < k; ++y) sum += p[y] * D[R[A[x]] * n + R[A[y]]];
      rw[x] = sum;
    }
    double q = 0;
    for (std::size_t x = 0; x < k; ++x) q += p[x] * rw[x];
    std::vector<double> Kp(k * k), M(k * k), sq(k), sA(k);
    for (std::size_t x = 0; x < k; ++x) {
      sq[x] = std::sqrt(p[x]);
      sA[x] = s[R[A[x]]];
    }
    for (std::size_t x = 0; x < k; ++x)
      for (std::size_t y = 0; y < k; ++y) {
        Kp[x * k + y] = -0.5 * ((D[R[A[x]] * n + R[A[y]]] - (rw[x] + rw[y])) + q);
        M[x * k + y] = Kp[x * k + y] * (sq[x] * sq[y]);
      }
    const Eigen e = power_method(M, k, sA, r.power_iters);
    const double lam = e.direction ? e.lambda : 0.0;
    if (lam < best) {
      best = lam;
      best_c = c;
      best_w = W;
    }
    if (!(lam > 0)) break;
    // projections (x_a - mu).v = (Kp (sqrt(p) o u))_a / sqrt(lambda)
    std::vector<double> z(k), proj;
    for (std::size_t x = 0; x < k; ++x) z[x] = sq[x] * e.u[x];
    matvec(Kp, k, z, &proj);
    const double sl = std::sqrt(lam);
    std::vector<double> tau(k);
    double tmax = 0;
    for (std::size_t x = 0; x < k; ++x) {
      const double pr = proj[x] / sl;
      tau[x] = pr * pr;
      tmax = std::max(tmax, tau[x]);
    }
    if (!(tmax > 0)) break;
    for (std::size_t x = 0; x < k; ++x) c[A[x]] = c[A[x]] * (1.0 - tau[x] / tmax);
  }
  if (best_c.empty()) return combo_mean(R);
  Combo out;
  for (std::size_t a = 0; a < m; ++a)
    if (best_c[a] > 0) {
      out.idx.push_back(R[a]);
      out.a.push_back(best_c[a]);
    }
  out.den = best_w;
  return out;
}

// ---- zeroing ----------------------------------------------------------------
// The rows kept by zeroing: usable and ||x||_p <= tau (strict test: a norm
// equal to tau is kept). norm_order: 0 = inf, 1, 2.
inline std::vector<unsigned char> zeroing_keep(const std::vector<RowStat>& st, double tau, int norm_order) {
  std::vector<unsigned char> keep(st.size(), 0);
  for (std::size_t i = 0; i < st.size(); ++i) {
    if (!usable(st[i])) continue;
    const double nv = norm_order == 0 ? st[i].linf : norm_order == 1 ? st[i].l1 : std::sqrt(st[i].sumsq);
    keep[i] = !(nv > tau);
  }
  return keep;
}

inline Combo zeroing(const RuleConfig& r, const std::vector<RowStat>& st) {
  const auto keep = zeroing_keep(st, r.zero_tau, r.norm_order);
  std::vector<std::size_t> idx;
  for (std::size_t i = 0; i < st.size(); ++i)
    if (keep[i]) idx.push_back(i);
  Combo c = combo_mean(idx);
  if (r.zero_mode == ZeroMode::kZero) c.den = double(st.size());
  return c;
}

// Whether a rule reads the L1 / L-inf norms (zeroing) and the distance matrix.
inline bool needs_abs_norms(const RuleConfig& r) { return r.rule == RuleId::kZeroing && r.norm_order != 2; }

// The rules that need nothing but the n x n distance matrix and the row
// statistics (clipped-clustering, smea, caf): one dispatch for both backends.
inline Combo from_distances(const RuleConfig& r, const double* D, std::size_t n, const std::vector<RowStat>& st) {
  if (r.rule == RuleId::kClippedClustering) return clipped_clustering(r, D, n, st);
  if (r.rule == RuleId::kSmea) return smea(r, D, n, st);
  return caf(r, D, n, st);
}

}  // namespace selection
}  // namespace pyagg
