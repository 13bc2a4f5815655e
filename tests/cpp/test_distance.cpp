// Distance-based rules (engine/src/cpu/distance.cpp) and their selection
// phases (engine/src/cpu/distance_impl.h): pairwise_sqdist, krum, multi-krum,
// bulyan, bulyan-multikrum, mda, nnm.
//
//  - hand-computed cases (expected numbers written out), ties -> lowest index;
//  - an independent naive reference (exact double distances from the data,
//    selections re-derived from the spec) on random data, with NaN / +-inf
//    rows planted at various indices: non-finite rows are never selected and
//    never mixed in, and with at most f of them the output is finite;
//  - the Gram-form cancellation case (rows 1e3 + 1e-2 noise in float32);
//  - d = 1, 7, 1013, 2*4096+13 (no multiple of any tile), float32/float64,
//    rows as separate allocations, the public API (contiguous vs row pointers);
//  - bitwise determinism across OpenMP thread counts.
// Bulyan's coordinate phase is cpu::averaged_median (coordinate.cpp); the
// selection phases are also tested alone through distance_impl.h.
//
// Set PYAGG_TIMING=1 to also print timings at n=20, f=4, d=1e6 float32.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "check.h"
#include "testdata.h"
#include "cpu/cpu_backend.h"
#include "cpu/rowmean.h"
#include "cpu_dispatch.h"
#include "common/select_distance.h"
#include "pyagg/rules.h"

using namespace pyagg;
namespace dt = pyagg::selection;

namespace {

using testdata::Inf;
using testdata::NaN;
using testdata::Rows;

// splitmix64: deterministic, platform-independent.
struct Rng {
  std::uint64_t s;
  explicit Rng(std::uint64_t seed) : s(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double normal() {
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  std::size_t below(std::size_t k) { return std::size_t(next() % k); }
};

template <typename T>
Rows<T> gaussian_rows(std::size_t n, std::size_t d, std::uint64_t seed, double spread = 1.0) {
  Rng rng(seed);
  Rows<T> r(n, d);
  for (std::size_t i = 0; i < n; ++i) {
    // a few rows far away (Byzantine-looking), the others around 0
    const double centre = (i % 5 == 4) ? 5.0 * spread : 0.0;
    for (std::size_t j = 0; j < d; ++j) r.data[i][j] = T(centre + spread * rng.normal());
  }
  return r;
}

template <typename T>
bool same_bits(const T* a, const T* b, std::size_t k) {
  return std::memcmp(a, b, k * sizeof(T)) == 0;
}
template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && same_bits(a.data(), b.data(), a.size());
}
template <typename T>
bool all_finite(const std::vector<T>& v) {
  for (T x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

std::string idx_str(const std::vector<std::size_t>& v) {
  std::string s = "{";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "}";
}

template <typename T>
double tol() {
  return std::is_same<T, float>::value ? 1e-6 : 1e-13;
}

// ---- the library under test ---------------------------------------------------

template <typename T>
std::vector<double> lib_D(const Rows<T>& r) {
  std::vector<double> D(r.n() * r.n(), -1.0);
  cpu::pairwise_sqdist<T>(r.p(), r.n(), r.d(), D.data());
  return D;
}
template <typename T>
std::vector<T> lib_krum(const Rows<T>& r, std::size_t f) {
  std::vector<T> o(r.d());
  cpu::krum<T>(r.p(), r.n(), r.d(), f, o.data());
  return o;
}
template <typename T>
std::vector<T> lib_multi_krum(const Rows<T>& r, std::size_t f, std::size_t m) {
  std::vector<T> o(r.d());
  cpu::multi_krum<T>(r.p(), r.n(), r.d(), f, m, o.data());
  return o;
}
template <typename T>
std::vector<T> lib_bulyan(const Rows<T>& r, std::size_t f) {
  std::vector<T> o(r.d());
  cpu::bulyan<T>(r.p(), r.n(), r.d(), f, o.data());
  return o;
}
template <typename T>
std::vector<T> lib_bmk(const Rows<T>& r, std::size_t f, std::size_t m) {
  std::vector<T> o(r.d());
  cpu::bulyan_multikrum<T>(r.p(), r.n(), r.d(), f, m, o.data());
  return o;
}
template <typename T>
std::vector<T> lib_mda(const Rows<T>& r, std::size_t f) {
  std::vector<T> o(r.d());
  cpu::mda<T>(r.p(), r.n(), r.d(), f, o.data());
  return o;
}
template <typename T>
std::vector<T> lib_nnm(const Rows<T>& r, std::size_t f) {
  std::vector<T> o(r.n() * r.d());
  cpu::nnm<T>(r.p(), r.n(), r.d(), f, o.data());
  return o;
}

// ---- naive reference (written from shared/spec/rules.md and the brief) --------

struct Ref {
  std::size_t n = 0;
  std::vector<double> D;  // exact-difference distances in double, +inf for non-finite rows
  std::vector<bool> fin;
  double at(std::size_t i, std::size_t j) const { return D[i * n + j]; }
};

template <typename T>
Ref ref_distances(const Rows<T>& r) {
  Ref R;
  R.n = r.n();
  R.fin.assign(R.n, true);
  for (std::size_t i = 0; i < R.n; ++i)
    for (T x : r.data[i])
      if (!std::isfinite(x)) R.fin[i] = false;
  R.D.assign(R.n * R.n, 0.0);
  for (std::size_t i = 0; i < R.n; ++i)
    for (std::size_t j = 0; j < R.n; ++j) {
      if (!R.fin[i] || !R.fin[j]) {
        R.D[i * R.n + j] = Inf;
        continue;
      }
      double s = 0.0;
      for (std::size_t k = 0; k < r.d(); ++k) {
        const double t = double(r.data[i][k]) - double(r.data[j][k]);
        s += t * t;
      }
      R.D[i * R.n + j] = s;
    }
  return R;
}

// Ref from a given distance matrix (finiteness read off the diagonal).
Ref ref_from_matrix(const std::vector<double>& D, std::size_t n) {
  Ref R;
  R.n = n;
  R.D = D;
  R.fin.assign(n, true);
  for (std::size_t i = 0; i < n; ++i) R.fin[i] = D[i * n + i] == 0.0;
  return R;
}

// Candidates sorted by (non-finite?, value, index).
std::vector<std::size_t> ref_rank(const Ref& R, std::vector<std::size_t> cand, const std::vector<double>& value) {
  std::stable_sort(cand.begin(), cand.end(), [&](std::size_t a, std::size_t b) {
    if (R.fin[a] != R.fin[b]) return bool(R.fin[a]);
    if (value[a] != value[b]) return value[a] < value[b];
    return a < b;
  });
  return cand;
}

// Krum scores of the rows in `rem` among themselves, k = |rem| - f - 2.
std::vector<double> ref_scores(const Ref& R, const std::vector<std::size_t>& rem, std::size_t f) {
  std::vector<double> sc(R.n, Inf);
  const long k = long(rem.size()) - long(f) - 2;
  for (std::size_t i : rem) {
    std::vector<double> ds;
    for (std::size_t j : rem)
      if (j != i) ds.push_back(R.at(i, j));
    std::sort(ds.begin(), ds.end());
    double s = 0.0;
    for (long t = 0; t < k; ++t) s += ds[std::size_t(t)];
    sc[i] = s;
  }
  return sc;
}

std::vector<std::size_t> iota_n(std::size_t n) {
  std::vector<std::size_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

std::vector<std::size_t> ref_krum_rank(const Ref& R, std::size_t f) {
  const auto all = iota_n(R.n);
  return ref_rank(R, all, ref_scores(R, all, f));
}

std::vector<std::size_t> ref_bulyan_sel(const Ref& R, std::size_t f) {
  std::vector<std::size_t> rem = iota_n(R.n), sel;
  for (std::size_t t = 0; t < R.n - 2 * f; ++t) {
    const std::size_t best = ref_rank(R, rem, ref_scores(R, rem, f))[0];
    sel.push_back(best);
    rem.erase(std::find(rem.begin(), rem.end(), best));
  }
  return sel;
}

// AggregaThor's Bulyan over Multi-Krum (shared/spec/rules.md), naively:
// neighbour sets and scores once on all n rows (k = n-f-2), then per round the
// m-t best remaining rows; the best r is removed and D[i][r] subtracted from
// the score of every remaining i that has r among its neighbours (infinite
// scores stay infinite).
std::vector<std::vector<std::size_t>> ref_bmk_sets(const Ref& R, std::size_t f, std::size_t m) {
  const std::size_t n = R.n, k = n - f - 2;
  std::vector<std::vector<std::size_t>> nbr(n);
  std::vector<double> sc(n, Inf);
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<std::size_t> o;
    for (std::size_t j = 0; j < n; ++j)
      if (j != i) o.push_back(j);
    std::stable_sort(o.begin(), o.end(), [&](std::size_t a, std::size_t b) {
      return R.at(i, a) != R.at(i, b) ? R.at(i, a) < R.at(i, b) : a < b;
    });
    o.resize(k);
    nbr[i] = o;
    double s = 0.0;
    for (std::size_t j : o) s += R.at(i, j);
    sc[i] = R.fin[i] ? s : Inf;
  }
  std::vector<std::size_t> rem = iota_n(n);
  std::vector<std::vector<std::size_t>> sets;
  for (std::size_t t = 0; t < n - 2 * f - 2; ++t) {
    const auto order = ref_rank(R, rem, sc);
    std::vector<std::size_t> s(order.begin(), order.begin() + long(m - t));
    std::sort(s.begin(), s.end());
    sets.push_back(s);
    const std::size_t r = order[0];
    rem.erase(std::find(rem.begin(), rem.end(), r));
    for (std::size_t i : rem)
      if (std::isfinite(sc[i]) && std::find(nbr[i].begin(), nbr[i].end(), r) != nbr[i].end()) sc[i] -= R.at(i, r);
  }
  return sets;
}

// Brute force over all subsets of n-f rows.
std::vector<std::size_t> ref_mda_sel(const Ref& R, std::size_t f) {
  const std::size_t n = R.n, s = n - f;
  std::vector<std::size_t> best;
  double best_d = 0;
  for (std::uint32_t mask = 0; mask < (1u << n); ++mask) {
    if (std::size_t(__builtin_popcount(mask)) != s) continue;
    std::vector<std::size_t> S;
    for (std::size_t i = 0; i < n; ++i)
      if (mask & (1u << i)) S.push_back(i);
    double dm = 0;
    for (std::size_t a : S)
      for (std::size_t b : S) dm = std::max(dm, R.at(a, b));
    if (best.empty() || dm < best_d || (dm == best_d && S < best)) {
      best = S;
      best_d = dm;
    }
  }
  return best;
}

std::vector<std::size_t> ref_nnm_sel(const Ref& R, std::size_t f, std::size_t i) {
  std::vector<double> di(R.n);
  for (std::size_t j = 0; j < R.n; ++j) di[j] = R.at(i, j);
  auto o = ref_rank(R, iota_n(R.n), di);
  o.resize(R.n - f);
  std::sort(o.begin(), o.end());
  return o;
}

// Mean of the rows `sel` (sorted): double sum in index order, / count, to T.
template <typename T>
std::vector<T> ref_mean(const std::vector<const T*>& rows, std::vector<std::size_t> sel, std::size_t d) {
  std::sort(sel.begin(), sel.end());
  std::vector<T> o(d);
  for (std::size_t c = 0; c < d; ++c) {
    double s = 0.0;
    for (std::size_t i : sel) s += double(rows[i][c]);
    o[c] = T(s / double(sel.size()));
  }
  return o;
}

// Bulyan's coordinate phase on given rows, through the library's averaged_median.
template <typename T>
std::vector<T> ref_coordinate_phase(const std::vector<const T*>& rows, std::size_t d, std::size_t beta) {
  std::vector<T> o(d);
  cpu::averaged_median<T>(rows.data(), rows.size(), d, beta, o.data());
  return o;
}

// bulyan-multikrum's coordinate phase (upper median), naively: per
// coordinate, the k finite values sorted, m = s[k/2], the b = min(beta, k)
// values first in the order (|v - m|, v), summed in ascending order in double.
template <typename T>
std::vector<T> ref_upper_phase(const std::vector<const T*>& rows, std::size_t d, std::size_t beta) {
  std::vector<T> o(d);
  for (std::size_t c = 0; c < d; ++c) {
    std::vector<double> v;
    for (const T* r : rows)
      if (std::isfinite(double(r[c]))) v.push_back(double(r[c]));
    if (v.empty()) {
      o[c] = T(0);
      continue;
    }
    std::sort(v.begin(), v.end());
    const double m = v[v.size() / 2];
    std::vector<double> w = v;
    std::stable_sort(w.begin(), w.end(), [m](double a, double b) {
      return std::fabs(a - m) != std::fabs(b - m) ? std::fabs(a - m) < std::fabs(b - m) : a < b;
    });
    w.resize(std::min(beta, w.size()));
    std::sort(w.begin(), w.end());
    double s = 0.0;
    for (double x : w) s += x;
    o[c] = T(s / double(w.size()));
  }
  return o;
}

template <typename T>
void check_vec(const std::vector<T>& got, const std::vector<double>& want, const std::string& what) {
  CHECK_MSG(got.size() == want.size(), what + ": size");
  for (std::size_t i = 0; i < std::min(got.size(), want.size()); ++i)
    CHECK_MSG(std::fabs(double(got[i]) - want[i]) <= tol<T>() * std::max(1.0, std::fabs(want[i])),
              what + "[" + std::to_string(i) + "] = " + std::to_string(double(got[i])) + ", want " +
                  std::to_string(want[i]));
}

void set_threads(int t) {
#ifdef _OPENMP
  omp_set_num_threads(t);
#else
  (void)t;
#endif
}

// The 2-D hand case: 7 rows, one outlier at index 0; Krum's order is not the
// index order. Pairwise squared distances (exact integers):
//        0    1    2    3    4    5    6
//   0    0  218  145  200  242  164  181
//   1  218    0   17   18   20   34   13
//   2  145   17    0    5   13    5    2
//   3  200   18    5    0    2    4    1
//   4  242   20   13    2    0   10    5
//   5  164   34    5    4   10    0    5
//   6  181   13    2    1    5    5    0
const std::vector<double> kHand7 = {10, 10, 3, -3, 2, 1, 0, 0, -1, -1, 0, 2, 1, 0};
const double kHand7D[49] = {0,   218, 145, 200, 242, 164, 181, 218, 0,  17, 18, 20, 34, 13, 145, 17, 0,
                            5,   13,  5,   2,   200, 18,  5,   0,   2,  4,  1,  242, 20, 13, 2,  0,  10,
                            5,   164, 34,  5,   4,   10,  0,   5,   181, 13, 2,  1,  5,  5,  0};

}  // namespace

// =============================================================================
// pairwise_sqdist
// =============================================================================

template <typename T>
void hand_distances() {
  Rows<T> r(3, 2, {0, 0, 3, 4, 1, 1});
  const auto D = lib_D(r);
  const double want[9] = {0, 25, 2, 25, 0, 13, 2, 13, 0};
  for (int k = 0; k < 9; ++k) CHECK_MSG(D[k] == want[k], "D[" + std::to_string(k) + "] = " + std::to_string(D[k]));
  Rows<T> h(7, 2, kHand7);
  const auto D7 = lib_D(h);
  for (int k = 0; k < 49; ++k) CHECK(D7[k] == kHand7D[k]);
}
TEST_CASE("pairwise_sqdist: hand cases (float, double)") {
  hand_distances<float>();
  hand_distances<double>();
}

template <typename T>
void distances_vs_reference() {
  const std::size_t ds[] = {1, 7, 1013, 2 * 4096 + 13};
  const std::size_t ns[] = {1, 2, 3, 5, 9, 13};
  for (std::size_t d : ds)
    for (std::size_t n : ns) {
      auto r = gaussian_rows<T>(n, d, 1000 * d + n);
      const auto D = lib_D(r);
      const Ref R = ref_distances(r);
      bool ok = true, sym = true, diag = true;
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j) {
          const double want = R.at(i, j), got = D[i * n + j];
          const double rel = std::is_same<T, float>::value ? 1e-5 : 1e-12;  // float: float lanes per tile
          if (!(std::fabs(got - want) <= rel * want)) ok = false;
          if (D[i * n + j] != D[j * n + i]) sym = false;
          if (i == j && got != 0.0) diag = false;
        }
      const std::string what = "n=" + std::to_string(n) + " d=" + std::to_string(d);
      CHECK_MSG(ok, "distances " + what);
      CHECK_MSG(sym, "symmetry " + what);
      CHECK_MSG(diag, "zero diagonal " + what);
    }
}
TEST_CASE("pairwise_sqdist: d = 1, 7, 1013, 8205, n = 1..13 vs exact double reference") {
  distances_vs_reference<float>();
  distances_vs_reference<double>();
}

template <typename T>
void nonfinite_distances() {
  // d = 8205: two blocks of 4096 + a 13-coordinate tail (not a multiple of
  // the accumulator lanes). Bad values in the first tile, in a later block,
  // and in the tail.
  const std::size_t n = 7, d = 2 * 4096 + 13;
  auto r = gaussian_rows<T>(n, d, 77);
  r.data[1][0] = T(NaN);
  r.data[3][5000] = T(Inf);
  r.data[4][d - 1] = T(-Inf);  // in the tail
  r.data[6][d - 3] = T(NaN);   // in the tail
  const auto D = lib_D(r);
  const Ref R = ref_distances(r);
  const bool bad[n] = {false, true, false, true, true, false, true};
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < n; ++j) {
      const double got = D[i * n + j];
      if (bad[i] || bad[j]) {
        CHECK_MSG(got == Inf, "D[" + std::to_string(i) + "][" + std::to_string(j) + "] must be +inf");
      } else {
        CHECK(std::isfinite(got));
        CHECK(std::fabs(got - R.at(i, j)) <= 1e-5 * R.at(i, j));
      }
    }
  // n = 1
  Rows<T> one(1, 3, {1, NaN, 2});
  CHECK(lib_D(one)[0] == Inf);
  Rows<T> ok1(1, 3, {1, 5, 2});
  CHECK(lib_D(ok1)[0] == 0.0);
  // all rows non-finite: every entry +inf, no crash
  Rows<T> all(3, 5, {NaN, 0, 0, 0, 0, 0, Inf, 0, 0, 0, 0, 0, 0, 0, -Inf});
  for (double v : lib_D(all)) CHECK(v == Inf);
}
TEST_CASE("pairwise_sqdist: NaN / +-inf rows are +inf to everything (diagonal included)") {
  nonfinite_distances<float>();
  nonfinite_distances<double>();
}

TEST_CASE("pairwise_sqdist: float rows near the float range stay finite and exact") {
  // (1e20 - (-1e20))^2 = 4e40 overflows float but not double; 3e38 - (-3e38)
  // overflows even the float difference.
  const std::size_t d = 10;
  Rows<float> r(3, d);
  for (std::size_t k = 0; k < d; ++k) {
    r.data[0][k] = 1e20f;
    r.data[1][k] = -1e20f;
    r.data[2][k] = (k % 2) ? 3e38f : -3e38f;
  }
  const auto D = lib_D(r);
  const Ref R = ref_distances(r);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(D[i * 3 + i] == 0.0);  // finite rows
    for (std::size_t j = 0; j < 3; ++j)
      CHECK_MSG(std::isfinite(D[i * 3 + j]) && std::fabs(D[i * 3 + j] - R.at(i, j)) <= 1e-12 * R.at(i, j),
                std::to_string(D[i * 3 + j]) + " vs " + std::to_string(R.at(i, j)));
  }
  CHECK(std::fabs(D[1] - 4e41) <= 1e-6 * 4e41);
}

TEST_CASE("Gram cancellation: rows 1e3 + 1e-2 noise (float32), Krum picks the row exact distances pick") {
  const std::size_t n = 9, f = 3, d = 1000 + 13;
  for (std::uint64_t seed = 1; seed <= 5; ++seed) {
    Rng rng(seed);
    Rows<float> r(n, d);
    for (std::size_t i = 0; i < n; ++i) {
      const double scale = 1e-2 * (1.0 + 0.15 * double(i));  // rows of different spread
      for (std::size_t k = 0; k < d; ++k) r.data[i][k] = float(1e3 + scale * rng.normal());
    }
    const Ref R = ref_distances(r);  // exact differences in double
    const std::size_t want = ref_krum_rank(R, f)[0];
    const auto out = lib_krum(r, f);
    CHECK_MSG(same_bits(out.data(), r.ptr[want], d),
              "seed " + std::to_string(seed) + ": want row " + std::to_string(want));
    // Our distances agree with the exact ones...
    const auto D = lib_D(r);
    double worst = 0, gram_worst = 0;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j) {
        worst = std::max(worst, std::fabs(D[i * n + j] - R.at(i, j)) / R.at(i, j));
        // ... whereas the Gram form in float (|x|^2 + |y|^2 - 2<x,y>) loses
        // everything here: this case does discriminate the two forms.
        float xx = 0, yy = 0, xy = 0;
        for (std::size_t k = 0; k < d; ++k) {
          xx += r.data[i][k] * r.data[i][k];
          yy += r.data[j][k] * r.data[j][k];
          xy += r.data[i][k] * r.data[j][k];
        }
        gram_worst = std::max(gram_worst, std::fabs(double(xx + yy - 2 * xy) - R.at(i, j)) / R.at(i, j));
      }
    CHECK_MSG(worst < 1e-5, "relative error " + std::to_string(worst));
    CHECK_MSG(gram_worst > 1.0, "the Gram form should fail here (rel. error " + std::to_string(gram_worst) + ")");
  }
}

// The Gram kernel (n > 32 rows) and its cancellation guard: which (pair,
// block) sums take the exact difference form is decided from the block's norms
// (distance < 2^-16 of the summed squared norms); pairwise_sqdist_counted
// reports how many did.
std::size_t counted_D(const Rows<float>& r, std::vector<double>* D) {
  D->assign(r.n() * r.n(), 0.0);
  std::size_t exact = 12345;
  cpu::pairwise_sqdist_counted<float>(r.p(), r.n(), r.d(), D->data(), &exact);
  return exact;
}

TEST_CASE("Gram distances (n > 32): fallback decision per pair and block, accuracy, Krum on the spec's case") {
  const std::size_t n = 40, f = 8, d = 2 * 4096 + 100;  // 3 reduction blocks
  const std::size_t nblocks = 3, npairs = n * (n - 1) / 2;
  std::vector<double> D;
  // (a) independent Gaussian rows: distance ~ sum of the norms, no fallback;
  //     the Gram form is accurate to ~1e-12 here.
  {
    auto r = gaussian_rows<float>(n, d, 4242);
    CHECK(counted_D(r, &D) == 0);
    const Ref R = ref_distances(r);
    double worst = 0;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j) worst = std::max(worst, std::fabs(D[i * n + j] - R.at(i, j)) / R.at(i, j));
    CHECK_MSG(worst < 1e-10, "gaussian rel. error " + std::to_string(worst));
  }
  // (b) the spec's case, rows 1e3 + 1e-2 noise: every pair of every block is
  //     recomputed exactly, and Krum picks the row exact distances pick.
  for (std::uint64_t seed = 1; seed <= 3; ++seed) {
    Rng rng(seed);
    Rows<float> r(n, d);
    for (std::size_t i = 0; i < n; ++i) {
      const double scale = 1e-2 * (1.0 + 0.05 * double(i));
      for (std::size_t k = 0; k < d; ++k) r.data[i][k] = float(1e3 + scale * rng.normal());
    }
    CHECK(counted_D(r, &D) == npairs * nblocks);
    const Ref R = ref_distances(r);
    double worst = 0;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j) worst = std::max(worst, std::fabs(D[i * n + j] - R.at(i, j)) / R.at(i, j));
    CHECK_MSG(worst < 1e-12, "cancelling rows rel. error " + std::to_string(worst));
    const std::size_t want = ref_krum_rank(R, f)[0];
    CHECK_MSG(same_bits(lib_krum(r, f).data(), r.ptr[want], d), "krum seed " + std::to_string(seed));
  }
  // (c) per pair: rows 0..9 a cancelling cluster (1e3 + noise), rows 10..39
  //     Gaussian: only the 45 pairs inside the cluster fall back, on every block.
  {
    Rng rng(7);
    Rows<float> r(n, d);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t k = 0; k < d; ++k) r.data[i][k] = i < 10 ? float(1e3 + 1e-2 * rng.normal()) : float(rng.normal());
    CHECK(counted_D(r, &D) == 45 * nblocks);
    const Ref R = ref_distances(r);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j) CHECK(std::fabs(D[i * n + j] - R.at(i, j)) <= 1e-10 * R.at(i, j));
  }
  // (d) per block: the cluster rows are nearly equal on block 1 only (Gaussian
  //     elsewhere): 45 fallbacks, all on that block.
  {
    Rng rng(8);
    Rows<float> r(n, d);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t k = 0; k < d; ++k) {
        const bool blk1 = k >= 4096 && k < 8192;
        r.data[i][k] = (i < 10 && blk1) ? float(1e3 + 1e-2 * rng.normal()) : float(rng.normal());
      }
    CHECK(counted_D(r, &D) == 45);
    const Ref R = ref_distances(r);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j) CHECK(std::fabs(D[i * n + j] - R.at(i, j)) <= 1e-10 * R.at(i, j));
  }
  // (e) non-finite rows on the Gram path: +inf to everything, no fallback
  //     counted for them; finite pairs unchanged.
  {
    auto r = gaussian_rows<float>(n, d, 99);
    r.data[3][5000] = std::numeric_limits<float>::quiet_NaN();
    r.data[17][10] = std::numeric_limits<float>::infinity();
    CHECK(counted_D(r, &D) == 0);
    for (std::size_t j = 0; j < n; ++j) {
      CHECK(D[3 * n + j] == Inf && D[j * n + 3] == Inf);
      CHECK(D[17 * n + j] == Inf && D[j * n + 17] == Inf);
    }
    CHECK(std::isfinite(D[0 * n + 1]) && D[0] == 0.0);
  }
  // (f) bitwise the same with 1, 2, 3 threads on the Gram path.
  {
    auto r = gaussian_rows<float>(n, d, 5);
    for (std::size_t k = 0; k < d; ++k) r.data[1][k] = r.data[0][k] + 1e-4f * float(k % 7);  // a fallback pair
    std::vector<double> D1, D2, D3;
    set_threads(1);
    const auto e1 = counted_D(r, &D1);
    set_threads(2);
    const auto e2 = counted_D(r, &D2);
    set_threads(3);
    const auto e3 = counted_D(r, &D3);
    set_threads(2);
    CHECK(e1 >= 1 && e1 == e2 && e2 == e3);
    CHECK(std::memcmp(D1.data(), D2.data(), D1.size() * sizeof(double)) == 0);
    CHECK(std::memcmp(D1.data(), D3.data(), D1.size() * sizeof(double)) == 0);
  }
}

// The selection rules' distances (pairwise_sqdist_select): on float input
// with n > 32 and an FMA target (the avx2 / avx512 copies) the float Gram
// kernel, with its guard (per pair and block: g >= (G_ii + G_jj) / 16, else
// the exact difference form in double), its per-block hand-over to the double
// Gram kernel (more than a quarter of the pairs unsafe) and block 0's
// decision for the whole pass (>= 8 blocks); elsewhere the double kernel.
struct SelectD {
  std::vector<double> D;
  std::size_t exact = 0, dp_blocks = 0;
};
SelectD select_D(const Rows<float>& r) {
  SelectD s;
  s.D.assign(r.n() * r.n(), -1.0);
  s.exact = s.dp_blocks = 12345;
  cpu::pairwise_sqdist_select<float>(r.p(), r.n(), r.d(), s.D.data(), &s.exact, &s.dp_blocks);
  return s;
}
// Independent N(0, 1) rows (no common component: no pair near the guard).
Rows<float> plain_gaussian(std::size_t n, std::size_t d, std::uint64_t seed) {
  Rng rng(seed);
  Rows<float> r(n, d);
  for (auto& row : r.data)
    for (auto& v : row) v = float(rng.normal());
  return r;
}
double worst_rel(const std::vector<double>& D, const Ref& R) {
  double worst = 0;
  for (std::size_t i = 0; i < R.n; ++i)
    for (std::size_t j = 0; j < R.n; ++j)
      if (i != j) worst = std::max(worst, std::fabs(D[i * R.n + j] - R.at(i, j)) / R.at(i, j));
  return worst;
}

// Whether the float kernel took every block of Gaussian rows (a: their
// select_D): it must on the avx2 / avx512 levels, and must not on base.
bool float_kernel_taken(const SelectD& a, std::size_t nblocks, const std::string& what) {
  const std::string isa = cpu::isa_in_use();
  const bool fa = a.dp_blocks == 0;
  if (isa == "avx2" || isa == "avx512") CHECK_MSG(fa, what + " is compiled in for " + isa);
  if (isa == "base") CHECK(!fa);
  CHECK(a.exact == 0);
  CHECK(a.dp_blocks == (fa ? 0 : nblocks));
  return fa;
}

// The scenarios both float Gram kernels share, on n rows (d = 2 blocks +
// 100, 9 blocks for block 0's decision). fa: the float kernel is in use;
// fallback_counts: the fallback kernel counts its exact-form pairs (the
// double Gram kernel does, the exact kernel has none); fallback_tol: its
// accuracy on a cancelling pair; mimic: rows copied from the last one.
void float_gram_scenarios(std::size_t n, bool fa, bool fallback_counts, double fallback_tol, std::size_t mimic,
                          std::uint64_t seed) {
  const std::size_t d = 2 * 4096 + 100, nblocks = 3, npairs = n * (n - 1) / 2;
  const std::string tag = " (n=" + std::to_string(n) + ")";
  // (b) per pair: rows 0..4 a cancelling cluster (1e3 + 1e-2 noise), the rest
  //     Gaussian: the cluster's 10 pairs take the exact form in double on
  //     every block (10 <= npairs / 4: no hand-over), exact to ~1e-12.
  {
    Rng rng(seed);
    Rows<float> r(n, d);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t k = 0; k < d; ++k) r.data[i][k] = i < 5 ? float(1e3 + 1e-2 * rng.normal()) : float(rng.normal());
    const SelectD b = select_D(r);
    CHECK_MSG(b.exact == (fa || fallback_counts ? 10 * nblocks : 0), "cluster exact" + tag);
    CHECK(b.dp_blocks == (fa ? 0 : nblocks));
    const Ref R = ref_distances(r);
    for (std::size_t i = 0; i < 5; ++i)
      for (std::size_t j = i + 1; j < 5; ++j)
        CHECK(std::fabs(b.D[i * n + j] - R.at(i, j)) <= (fa ? 1e-12 : fallback_tol) * R.at(i, j));
    CHECK(worst_rel(b.D, R) < 6.2e-5);
  }
  // (b') a mimic attack: rows 0..mimic-1 copies of the last row plus 0.1
  //     noise (cos ~0.99): the pairs among them and the last row take the
  //     exact form on every block (the double kernel's 2^-16 guard keeps
  //     them in the Gram form); no block is handed over.
  {
    auto r = plain_gaussian(n, d, seed + 1);
    Rng rng(seed + 2);
    for (std::size_t b = 0; b < mimic; ++b)
      for (std::size_t k = 0; k < d; ++k) r.data[b][k] = float(double(r.data[n - 1][k]) + 0.1 * rng.normal());
    const SelectD m = select_D(r);
    CHECK_MSG(m.exact == (fa ? (mimic + 1) * mimic / 2 * nblocks : 0), "mimic exact" + tag);
    CHECK(m.dp_blocks == (fa ? 0 : nblocks));
    const Ref R = ref_distances(r);
    CHECK(std::fabs(m.D[0 * n + (n - 1)] - R.at(0, n - 1)) <= (fa ? 1e-12 : fallback_tol) * R.at(0, n - 1));
    CHECK(worst_rel(m.D, R) < 6.2e-5);
  }
  // (c) per block: every row is 1e3 + noise on block 1 only: all its pairs
  //     fail the guard, the fallback kernel takes that block (the double
  //     kernel's own guard sends every pair to the exact form); blocks 0 and
  //     2 stay float.
  {
    Rng rng(seed + 3);
    Rows<float> r(n, d);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t k = 0; k < d; ++k) {
        const bool blk1 = k >= 4096 && k < 8192;
        r.data[i][k] = blk1 ? float(1e3 + 1e-2 * rng.normal()) : float(rng.normal());
      }
    const SelectD c = select_D(r);
    CHECK_MSG(c.exact == (fallback_counts ? npairs : 0), "per-block exact" + tag);
    CHECK(c.dp_blocks == (fa ? 1 : nblocks));
    CHECK(worst_rel(c.D, ref_distances(r)) < 6.2e-5);
  }
  // (d) block 0 decides (>= 8 blocks): rows highly correlated (cos ~0.99, no
  //     cancellation for the fallback) on block 0 only: block 0 goes to the
  //     fallback kernel, and so does every other block without a float
  //     attempt: D is pairwise_sqdist's, bit for bit. Correlated on block 1
  //     only: block 0 is float, block 1 alone goes to the fallback.
  {
    const std::size_t d9 = 8 * 4096 + 5;
    Rng rng(seed + 4);
    Rows<float> r(n, d9);
    std::vector<double> base(4096);
    for (auto& v : base) v = rng.normal();
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t k = 0; k < d9; ++k) r.data[i][k] = k < 4096 ? float(base[k] + 0.1 * rng.normal()) : float(rng.normal());
    const SelectD e = select_D(r);
    CHECK(e.exact == 0);
    CHECK(e.dp_blocks == 9);
    CHECK(same_bits(e.D, lib_D(r)));
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t k = 0; k < 2 * 4096; ++k)
        r.data[i][k] = k >= 4096 ? float(base[k - 4096] + 0.1 * rng.normal()) : float(rng.normal());
    const SelectD e2 = select_D(r);
    CHECK(e2.dp_blocks == (fa ? 1 : 9));
    CHECK(worst_rel(e2.D, ref_distances(r)) < 6.2e-5);
  }
  // (e) squares outside the float range: tiny rows (x ~ 1e-22: squares
  //     underflow) and huge rows (x ~ 1e21: squares overflow float) are
  //     computed in double (the exact form, or the fallback kernel and its
  //     own fallbacks), accurately.
  for (double scale : {1e-22, 1e21}) {
    auto r = gaussian_rows<float>(n, d, seed + 5);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t k = 0; k < d; ++k) r.data[i][k] = float(double(r.data[i][k]) * scale);
    const SelectD t = select_D(r);
    const double w = worst_rel(t.D, ref_distances(r));
    CHECK_MSG(w < 1e-10, "scale " + std::to_string(scale) + ": rel. error " + std::to_string(w) + tag);
    CHECK(all_finite(t.D));
  }
  // (f) non-finite rows: +inf to everything, D[i][i] = +inf, not counted.
  {
    auto r = plain_gaussian(n, d, seed + 6);
    r.data[3][5000] = std::numeric_limits<float>::quiet_NaN();
    r.data[17][10] = -std::numeric_limits<float>::infinity();
    const SelectD f = select_D(r);
    CHECK_MSG(f.exact == 0 && f.dp_blocks == (fa ? 0 : nblocks),
              "exact " + std::to_string(f.exact) + " dp " + std::to_string(f.dp_blocks) + tag);
    for (std::size_t j = 0; j < n; ++j) {
      CHECK(f.D[3 * n + j] == Inf && f.D[j * n + 3] == Inf);
      CHECK(f.D[17 * n + j] == Inf && f.D[j * n + 17] == Inf);
    }
    CHECK(f.D[0] == 0.0 && std::isfinite(f.D[1]));
  }
  // (g) bitwise the same with 1, 2, 3 threads (a fallback pair; 9 blocks:
  //     block 0 alone first).
  {
    auto r = gaussian_rows<float>(n, 8 * 4096 + 77, seed + 7);
    for (std::size_t k = 0; k < r.d(); ++k) r.data[1][k] = r.data[0][k] + 1e-4f * float(k % 7);
    set_threads(1);
    const SelectD s1 = select_D(r);
    set_threads(2);
    const SelectD s2 = select_D(r);
    set_threads(3);
    const SelectD s3 = select_D(r);
    set_threads(2);
    CHECK(s1.exact == s2.exact && s2.exact == s3.exact && (!(fa || fallback_counts) || s1.exact >= 9));
    CHECK(s1.dp_blocks == s2.dp_blocks && s2.dp_blocks == s3.dp_blocks);
    CHECK(same_bits(s1.D, s2.D) && same_bits(s1.D, s3.D));
  }
}

TEST_CASE("float Gram distances (selection rules, n > 32): bound, guard per pair, double kernel per block / from block 0") {
  const std::size_t n = 40, d = 2 * 4096 + 100, nblocks = 3;
  // (a) Gaussian rows: no cancellation. The float kernel takes every block
  //     (the avx2 / avx512 copies) or the double kernel all of them (base).
  auto g = plain_gaussian(n, d, 4243);
  const SelectD a = select_D(g);
  const bool fa = float_kernel_taken(a, nblocks, "the float Gram kernel");
  const Ref RG = ref_distances(g);
  // Within the documented bound (6.2e-5), and in fact ~1e-8 here (rounding
  // errors of independent runs do not add up).
  CHECK_MSG(worst_rel(a.D, RG) < (fa ? 1e-7 : 1e-12), "gaussian rel. error " + std::to_string(worst_rel(a.D, RG)));
  const auto Ddp = lib_D(g);
  if (fa) CHECK_MSG(!same_bits(a.D, Ddp), "the float kernel's D should not be the double kernel's bits");
  else CHECK(same_bits(a.D, Ddp));
  // (b') rows sharing a large common component (x = 5 + noise: g / (G_ii +
  //     G_jj) ~ 1/26, under the guard's 1/16; the double kernel's 2^-16 guard
  //     keeps them): the float kernel sends those pairs to the exact form.
  {
    auto r = gaussian_rows<float>(n, d, 4244);  // rows 4, 9, ..., 39 around 5: 28 pairs
    const SelectD b = select_D(r);
    CHECK(b.exact == (fa ? 28 * nblocks : 0));
    CHECK(worst_rel(b.D, ref_distances(r)) < 6.2e-5);
  }
  // The rest: the double Gram kernel as the fallback (it counts its exact
  // pairs; a cancelling pair to ~1e-12).
  float_gram_scenarios(n, fa, true, 1e-12, 8, 17);
  // (h) double input: the double Gram kernel.
  {
    auto rd = gaussian_rows<double>(n, d, 8);
    std::vector<double> D1(n * n), D2(n * n);
    std::size_t ex = 0, dpb = 0;
    cpu::pairwise_sqdist_select<double>(rd.p(), n, d, D1.data(), &ex, &dpb);
    cpu::pairwise_sqdist<double>(rd.p(), n, d, D2.data());
    CHECK(dpb == nblocks && same_bits(D1, D2));
  }
}

TEST_CASE("exact kernel: the relative error bound callers read (exact_kernel_rel_bound) holds") {
  auto gamma = [](double k, double u) { return k * u / (1 - k * u); };
  const double uf = std::ldexp(1.0, -24), ud = std::ldexp(1.0, -53), u50 = std::ldexp(1.0, -50);
  // n = 6, d = 1e6 (245 blocks): a lane sums 32 terms: gamma_34 > 1e-6 (the
  // figure the geometric median used to assume), + (4 + 245 + 4) double folds.
  CHECK(cpu::exact_kernel_rel_bound<float>(6, 1000000) == gamma(34, uf) + gamma(253, ud) + u50);
  CHECK(cpu::exact_kernel_rel_bound<float>(6, 1000000) > 2e-6);
  CHECK(cpu::exact_kernel_rel_bound<float>(12, 4096) == gamma(18, uf) + gamma(8 + 1 + 4, ud) + u50);
  CHECK(cpu::exact_kernel_rel_bound<float>(20, 4097) == gamma(10, uf) + gamma(16 + 2 + 4, ud) + u50);
  CHECK(cpu::exact_kernel_rel_bound<float>(32, 1) == gamma(6, uf) + gamma(32 + 1 + 4, ud) + u50);
  CHECK(cpu::exact_kernel_rel_bound<double>(20, 4096) == gamma(10, ud) + gamma(32 + 1 + 4, ud));
  // Rows with a common offset (every difference rounded), with 1 + tiny
  // steps (every lane's sum rounded at each term), and tiny rows (x ~ 1e-21:
  // float squares underflow; those pairs are recomputed in double) and rows
  // of mixed scale (1e-21 next to 1): within the bound.
  for (std::size_t n : {2, 5, 6, 7, 12, 13, 20, 32})
    for (int kind = 0; kind < 4; ++kind) {
      const std::size_t d = 3 * 4096 + 37;
      Rng rng(600 + n + std::uint64_t(kind));
      Rows<float> r(n, d);
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t k = 0; k < d; ++k)
          r.data[i][k] = kind == 0   ? float(3.0 + 1e-3 * rng.normal())
                         : kind == 1 ? float(1.0 + 1e-7 * double(i) + rng.normal())
                         : kind == 2 ? float(1e-21 * rng.normal())
                                     : float((i % 2 ? 1e-21 : 1.0) * rng.normal());
      // Reference to ~1e-19: float differences are exact in long double, the
      // squares rounded once, summed with Neumaier's compensation.
      Ref R;
      R.n = n;
      R.D.assign(n * n, 0.0);
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j) {
          long double sum = 0, comp = 0;
          for (std::size_t k = 0; k < d; ++k) {
            const long double t = (static_cast<long double>(r.data[i][k]) - r.data[j][k]), q = t * t;
            const long double s2 = sum + q;
            comp += std::fabs(sum) >= std::fabs(q) ? (sum - s2) + q : (q - s2) + sum;
            sum = s2;
          }
          R.D[i * n + j] = double(sum + comp);
        }
      const auto D = lib_D(r);
      const double bound = cpu::exact_kernel_rel_bound<float>(n, d);
      const double w = worst_rel(D, R);
      CHECK_MSG(w <= bound, "n=" + std::to_string(n) + " kind " + std::to_string(kind) + ": rel. error " +
                                std::to_string(w) + " > bound " + std::to_string(bound));
      std::vector<double> Dx(n * n);
      cpu::pairwise_sqdist_exact_double<float>(r.p(), n, d, Dx.data());
      // (+ 2^-53: the reference's own rounding to double)
      CHECK(worst_rel(Dx, R) <= cpu::exact_kernel_rel_bound<double>(n, d) + std::ldexp(1.0, -53));
    }
}

// The lane-wise float Gram kernel (pairwise_sqdist_select, float input, n <=
// 32 where lane_worth(n): n = 8, 11, 12, 14..32; avx2 / avx512 copies): the
// same guard and bound as the packed kernel, its fallback per block the exact
// kernel (pairwise_sqdist's at these n, counted in dp_blocks), block 0's
// decision for the whole pass (>= 8 blocks).
TEST_CASE("lane-wise float Gram distances (selection rules, n <= 32): bound, guard per pair, exact kernel per block / from block 0") {
  const std::size_t n = 20, d = 2 * 4096 + 100, nblocks = 3;
  // (a) Gaussian rows, and the sizes around the kernel's choice; d with a
  //     tail of len % 16 coordinates (the zero-padded step) or only a tail.
  auto g = plain_gaussian(n, d, 5243);
  const SelectD a = select_D(g);
  const bool fa = float_kernel_taken(a, nblocks, "the lane-wise kernel");
  if (!fa) CHECK(same_bits(a.D, lib_D(g)));
  CHECK_MSG(worst_rel(a.D, ref_distances(g)) < (fa ? 1e-7 : 1e-6),
            "gaussian rel. error " + std::to_string(worst_rel(a.D, ref_distances(g))));
  if (fa) CHECK_MSG(!same_bits(a.D, lib_D(g)), "the lane-wise kernel's D should not be the exact kernel's bits");
  for (std::size_t m : {2, 5, 8, 9, 10, 11, 13, 14, 31, 32})
    for (std::size_t dd : {std::size_t(1), std::size_t(7), std::size_t(16), std::size_t(33), std::size_t(4096 + 250)}) {
      auto r = plain_gaussian(m, dd, 31 * m + dd);
      const SelectD s = select_D(r);
      const bool lane = fa && (m == 8 || m == 11 || m >= 14);  // lane_worth
      const std::string tag = "n=" + std::to_string(m) + " d=" + std::to_string(dd);
      CHECK_MSG(s.dp_blocks == (lane ? 0 : (dd + 4095) / 4096), tag + ": dp_blocks " + std::to_string(s.dp_blocks));
      if (!lane) CHECK_MSG(same_bits(s.D, lib_D(r)), tag + ": the exact kernel's bits");
      // (1 coordinate: rounding of a single product, relative 2^-24 of it)
      CHECK_MSG(worst_rel(s.D, ref_distances(r)) < (lane ? 1e-6 : 2e-6), tag + ": rel. error");
    }
  // The rest: the exact kernel as the fallback (no exact-form pairs counted;
  // a cancelling pair to its float-lane accuracy).
  float_gram_scenarios(n, fa, false, 1e-6, 6, 27);
}

TEST_CASE("selection rules at n = 20 / 40 / 100 on the float Gram paths pick what exact distances pick") {
  for (std::size_t n : {std::size_t(20), std::size_t(40), std::size_t(100)}) {
    const std::size_t f = n / 5, d = 4096 + 333;
    for (std::uint64_t seed = 1; seed <= 3; ++seed) {
      auto r = gaussian_rows<float>(n, d, 900 + seed);
      const Ref R = ref_distances(r);
      const std::size_t want = ref_krum_rank(R, f)[0];
      CHECK_MSG(same_bits(lib_krum(r, f).data(), r.ptr[want], d),
                "krum n=" + std::to_string(n) + " seed " + std::to_string(seed));
      // multi-krum: the mean of the m best rows of the exact ranking
      const std::size_t m = n - f;
      auto rank = ref_krum_rank(R, f);
      std::vector<std::size_t> sel(rank.begin(), rank.begin() + std::ptrdiff_t(m));
      std::sort(sel.begin(), sel.end());
      std::vector<double> want_mean(d, 0.0);
      for (std::size_t k = 0; k < d; ++k) {
        for (std::size_t i : sel) want_mean[k] += double(r.data[i][k]);
        want_mean[k] /= double(m);
      }
      check_vec(lib_multi_krum(r, f, m), want_mean, "multi-krum n=" + std::to_string(n));
      // bulyan's rounds and nnm's neighbour sets on the float D
      const SelectD S = select_D(r);
      auto bs = dt::bulyan_select(S.D.data(), n, f), bw = ref_bulyan_sel(R, f);
      std::sort(bs.begin(), bs.end());
      std::sort(bw.begin(), bw.end());
      CHECK_MSG(bs == bw, "bulyan selection n=" + std::to_string(n) + ": " + idx_str(bs) + " vs " + idx_str(bw));
      for (std::size_t i = 0; i < n; ++i) {
        auto got = dt::nnm_select(S.D.data(), n, f, i);
        auto exact = dt::nnm_select(R.D.data(), n, f, i);
        std::sort(got.begin(), got.end());
        std::sort(exact.begin(), exact.end());
        CHECK_MSG(got == exact, "nnm set of row " + std::to_string(i) + ", n=" + std::to_string(n));
      }
    }
  }
}

// =============================================================================
// krum / multi-krum
// =============================================================================

template <typename T>
void hand_krum() {
  // d = 1, rows 0 1 2 10 11, f = 1, k = 2: scores 5 2 5 65 82 -> row 1.
  Rows<T> a(5, 1, {0, 1, 2, 10, 11});
  check_vec(lib_krum(a, 1), {1.0}, "krum a");
  // rows 0 2 4 6 8: scores 20 8 8 8 20, a three-way tie -> lowest index, row 1.
  Rows<T> b(5, 1, {0, 2, 4, 6, 8});
  check_vec(lib_krum(b, 1), {2.0}, "krum tie");
  // The same tie with the rows reversed: 8 6 4 2 0 -> row 1 (= 6).
  Rows<T> b2(5, 1, {8, 6, 4, 2, 0});
  check_vec(lib_krum(b2, 1), {6.0}, "krum tie reversed");
  // 2-D hand case, f = 1, k = 4: scores 690 68 25 12 30 24 13 -> row 3 = (0, 0).
  Rows<T> h(7, 2, kHand7);
  check_vec(lib_krum(h, 1), {0.0, 0.0}, "krum hand7");
  const auto sc = dt::krum_scores_all(kHand7D, 7, 1);
  const double want_sc[7] = {690, 68, 25, 12, 30, 24, 13};
  for (int i = 0; i < 7; ++i) CHECK(sc[std::size_t(i)] == want_sc[i]);

  // multi-krum on a: scores 5 2 5 65 82; m = 2 -> rows {1, 0} (0 and 2 tie at
  // 5: index 0 wins) -> 0.5; m = 3 -> {0, 1, 2} -> 1.
  check_vec(lib_multi_krum(a, 1, 2), {0.5}, "multi-krum m=2 tie");
  check_vec(lib_multi_krum(a, 1, 3), {1.0}, "multi-krum m=3");
  check_vec(lib_multi_krum(a, 1, 1), {1.0}, "multi-krum m=1 is krum");
  // hand7: m = 3 -> rows {3, 6, 5} -> (1/3, 2/3); m = 5 -> {3, 6, 5, 2, 4} -> (2/5, 2/5)
  check_vec(lib_multi_krum(h, 1, 3), {1.0 / 3.0, 2.0 / 3.0}, "multi-krum hand7 m=3");
  check_vec(lib_multi_krum(h, 1, 5), {2.0 / 5.0, 2.0 / 5.0}, "multi-krum hand7 m=5");
  const auto sel = dt::krum_select(kHand7D, 7, 1, 5);
  CHECK_MSG((sel == std::vector<std::size_t>{3, 6, 5, 2, 4}), idx_str(sel));
}
TEST_CASE("krum, multi-krum: hand cases, ties -> lowest index") {
  hand_krum<float>();
  hand_krum<double>();
}

// =============================================================================
// bulyan / bulyan-multikrum
// =============================================================================

TEST_CASE("bulyan selection (hook): hand7, rounds with ties and k <= 0") {
  // n = 7, f = 1, theta = 5 rounds:
  //   r=7 k=4: scores 690 68 25 12 30 24 13  -> 3
  //   r=6 k=3: 490 50 20 . 28 20 12           -> 6
  //   r=5 k=2: 309 37 18 . 23 15 .            -> 5
  //   r=4 k=1: 145 17 13 . 13 . .             -> 2 (tie with 4: lowest index)
  //   r=3 k=0: every score 0                  -> 0 (lowest index, the outlier)
  const auto sel = dt::bulyan_select(kHand7D, 7, 1);
  CHECK_MSG((sel == std::vector<std::size_t>{3, 6, 5, 2, 0}), idx_str(sel));
  // Bulyan over Multi-Krum, theta = n-2f-2 = 3 rounds.
  //   m = 3: round 0 {3,5,6} (remove 3); round 1: 2 best of 12(6) 20(2) 20(5)
  //          -> {2,6} (tie 2/5: index 2) (remove 6); round 2: 1 best -> {5}
  const auto s3 = dt::bulyan_multikrum_select(kHand7D, 7, 1, 3);
  CHECK(s3.size() == 3);
  if (s3.size() == 3) {
    CHECK_MSG((s3[0] == std::vector<std::size_t>{3, 5, 6}), idx_str(s3[0]));
    CHECK_MSG((s3[1] == std::vector<std::size_t>{2, 6}), idx_str(s3[1]));
    CHECK_MSG((s3[2] == std::vector<std::size_t>{5}), idx_str(s3[2]));
  }
  //   m = 4: {2,3,5,6}, {2,5,6}, {2,5}
  const auto s4 = dt::bulyan_multikrum_select(kHand7D, 7, 1, 4);
  CHECK(s4.size() == 3);
  if (s4.size() == 3) {
    CHECK_MSG((s4[0] == std::vector<std::size_t>{2, 3, 5, 6}), idx_str(s4[0]));
    CHECK_MSG((s4[1] == std::vector<std::size_t>{2, 5, 6}), idx_str(s4[1]));
    CHECK_MSG((s4[2] == std::vector<std::size_t>{2, 5}), idx_str(s4[2]));
  }
  // f = 0, n = 3: rounds r=3 k=1, r=2 k=0, r=1 k=-1 (scores 0): all rows, in order of quality.
  const double D3[9] = {0, 1, 9, 1, 0, 4, 9, 4, 0};  // rows 0 1 3 (d=1)
  const auto s0 = dt::bulyan_select(D3, 3, 0);
  CHECK_MSG((s0 == std::vector<std::size_t>{0, 1, 2}), idx_str(s0));
}

template <typename T>
void hand_bulyan() {
  Rows<T> h(7, 2, kHand7);
  // selected rows {3,6,5,2,0} = (0,0) (1,0) (0,2) (2,1) (10,10); per coordinate
  // the values 0 0 1 2 10, median 1, beta = 3 closest: 1, then 0 and 2 tie at
  // distance 1 -> the smaller (0), then 0 -> (1+0+0)/3.
  check_vec(lib_bulyan(h, 1), {1.0 / 3.0, 1.0 / 3.0}, "bulyan hand7");
  // bulyan-multikrum m = 3: contributions (1/3, 2/3), (3/2, 1/2), (0, 2);
  // beta = theta-2f = 1: the median -> (1/3, 2/3).
  check_vec(lib_bmk(h, 1, 3), {1.0 / 3.0, 2.0 / 3.0}, "bulyan-multikrum hand7 m=3");
  // m = 4: contributions (3/4, 3/4), (1, 1), (1, 3/2) -> medians (1, 1).
  check_vec(lib_bmk(h, 1, 4), {1.0, 1.0}, "bulyan-multikrum hand7 m=4");
}
// Cases where AggregaThor's rule (scores once, pruned distances subtracted,
// upper median) differs from re-scoring each round (the old definition).
template <typename T>
void hand_bmk_aggregathor() {
  // d = 1, n = 7, f = 1 (k = 4, theta = 3), rows -3 -1 2 1 -5 -6 5.
  // Scores 33 33 44 37 57 84 125 (N4 = {5,0,1,3}). m = 4:
  //   round 0: {0,1,3,2} -> -1/4; remove 0: 1:29 2:19 3:21 4:53 5:75 6:61
  //   round 1: {2,3,1} -> 2/3; remove 2 (not a neighbour of 4 or 5):
  //            1:20 3:20 4:53 5:75 6:52
  //   round 2: {1,3} -> 0 (re-scoring with k = 2 would give row 4 17: {1,4}).
  //   upper median of (-1/4, 2/3, 0), beta = 1 -> 0.
  const std::vector<double> x7 = {-3, -1, 2, 1, -5, -6, 5};
  Rows<T> a(7, 1, x7);
  check_vec(lib_bmk(a, 1, 4), {0.0}, "bulyan-multikrum aggregathor m=4");
  //   m = 3: {0,1,3} -> -1, {2,3} -> 3/2, {1} -> -1 -> -1.
  check_vec(lib_bmk(a, 1, 3), {-1.0}, "bulyan-multikrum aggregathor m=3");
  std::vector<double> D(49);
  for (int i = 0; i < 7; ++i)
    for (int j = 0; j < 7; ++j) D[std::size_t(i * 7 + j)] = (x7[std::size_t(i)] - x7[std::size_t(j)]) * (x7[std::size_t(i)] - x7[std::size_t(j)]);
  const auto s4 = dt::bulyan_multikrum_select(D.data(), 7, 1, 4);
  CHECK(s4.size() == 3);
  if (s4.size() == 3) {
    CHECK_MSG((s4[0] == std::vector<std::size_t>{0, 1, 2, 3}), idx_str(s4[0]));
    CHECK_MSG((s4[1] == std::vector<std::size_t>{1, 2, 3}), idx_str(s4[1]));
    CHECK_MSG((s4[2] == std::vector<std::size_t>{1, 3}), idx_str(s4[2]));
  }
  // Even theta (upper median): n = 8, f = 1 (k = 5, theta = 4, beta = 2),
  // rows 0 1 2 10 11 12 13 14, m = 5: rounds {3..7} -> 12, {4..7} -> 12.5,
  // {1,2,5} -> 5 (ties 2/5 and 1/6 by index), {5,6} -> 12.5; sorted
  // 5 12 12.5 12.5, upper median 12.5 -> (12.5 + 12.5)/2 (the lower-mean
  // median 12.25 would give 12.25).
  Rows<T> b(8, 1, {0, 1, 2, 10, 11, 12, 13, 14});
  check_vec(lib_bmk(b, 1, 5), {12.5}, "bulyan-multikrum aggregathor even theta");
  // n = 8: rows 0 1 3 4 5 8 20 100, m = 5: 13/5, 10/4, 6/3, 1/2 -> upper
  // median 2.5, closest two 2.5 and 2.6 -> 2.55.
  Rows<T> c(8, 1, {0, 1, 3, 4, 5, 8, 20, 100});
  check_vec(lib_bmk(c, 1, 5), {2.55}, "bulyan-multikrum aggregathor 2.55");
}

TEST_CASE("bulyan-multikrum: AggregaThor's rule on hand cases (scores once, pruned subtraction, upper median)") {
  hand_bmk_aggregathor<float>();
  hand_bmk_aggregathor<double>();
}

TEST_CASE("bulyan, bulyan-multikrum: hand cases") {
  hand_bulyan<float>();
  hand_bulyan<double>();
}

// =============================================================================
// mda
// =============================================================================

template <typename T>
void hand_mda() {
  // d = 1, rows 0 1 2 3, f = 1: {0,1,2} and {1,2,3} both have diameter 4 ->
  // the lexicographically smaller {0,1,2} -> mean 1 (not 2).
  Rows<T> a(4, 1, {0, 1, 2, 3});
  check_vec(lib_mda(a, 1), {1.0}, "mda tie");
  Rows<T> a2(4, 1, {3, 2, 1, 0});
  check_vec(lib_mda(a2, 1), {2.0}, "mda tie reversed");
  // hand7, f = 2: {2,3,4,5,6} (diameter 13) -> (2/5, 2/5); f = 1: {1..6} (diameter 34) -> (5/6, -1/6)
  Rows<T> h(7, 2, kHand7);
  check_vec(lib_mda(h, 2), {0.4, 0.4}, "mda hand7 f=2");
  check_vec(lib_mda(h, 1), {5.0 / 6.0, -1.0 / 6.0}, "mda hand7 f=1");
  // f = 0: every row.
  check_vec(lib_mda(a, 0), {1.5}, "mda f=0");
  // Planted tight cluster: 6 rows within 1e-3 of c, 3 rows in a tighter
  // cluster far away; n = 9, f = 3 -> the 6 near rows (placed at odd indices).
  const std::size_t n = 9, f = 3, d = 50;
  Rng rng(5);
  Rows<T> r(n, d);
  std::vector<std::size_t> near;
  for (std::size_t i = 0; i < n; ++i) {
    const bool in = (i % 2 == 1) || i == 8 || i == 0;  // 0,1,3,5,7,8
    if (in) near.push_back(i);
    for (std::size_t k = 0; k < d; ++k)
      r.data[i][k] = in ? T(1.0 + 1e-3 * rng.normal()) : T(40.0 + 1e-5 * rng.normal());
  }
  CHECK(near.size() == n - f);
  const auto sel = dt::mda_select(lib_D(r).data(), n, f);
  CHECK_MSG(sel == near, idx_str(sel));
  CHECK(same_bits(lib_mda(r, f), ref_mean(r.ptr, near, d)));
}
TEST_CASE("mda: hand cases, ties -> lexicographically smallest subset, planted cluster") {
  hand_mda<float>();
  hand_mda<double>();
}

TEST_CASE("mda selection (hook): branch and bound == brute force, many ties and non-finite rows") {
  Rng rng(11);
  int cases = 0;
  for (int it = 0; it < 400; ++it) {
    const std::size_t n = 2 + rng.below(10);  // 2..11
    const std::size_t f = rng.below((n - 1) / 2 + 1);  // n >= 2f+1
    const std::size_t d = 1 + rng.below(3);
    Rows<double> r(n, d);
    for (auto& row : r.data)
      for (auto& x : row) x = double(rng.below(4));  // small integers: many equal distances
    const std::size_t nbad = rng.below(f + 1);
    for (std::size_t b = 0; b < nbad; ++b) r.data[rng.below(n)][rng.below(d)] = (b % 2) ? Inf : NaN;
    const auto D = lib_D(r);
    const Ref R = ref_from_matrix(D, n);
    std::uint64_t nodes = 0;
    const auto got = dt::mda_select(D.data(), n, f, &nodes);
    const auto want = ref_mda_sel(R, f);
    CHECK_MSG(got == want, "n=" + std::to_string(n) + " f=" + std::to_string(f) + ": " + idx_str(got) + " vs " +
                               idx_str(want));
    for (std::size_t i : got) CHECK(R.fin[i] || nbad > f);
    ++cases;
  }
  CHECK(cases == 400);
}

// =============================================================================
// nnm
// =============================================================================

template <typename T>
void hand_nnm() {
  // d = 1, rows 0 1 3 10, f = 1 (3 neighbours, itself included):
  //   row 0: 0(0) 1(1) 9(3)      -> {0,1,2} -> 4/3
  //   row 1: 0(1) 1(0) 4(3)      -> 4/3
  //   row 2: 0(3) 4(1) 9(0)      -> 4/3
  //   row 3: 0(10) 49(3) 81(1)   -> {1,2,3} -> 14/3
  Rows<T> a(4, 1, {0, 1, 3, 10});
  check_vec(lib_nnm(a, 1), {4.0 / 3, 4.0 / 3, 4.0 / 3, 14.0 / 3}, "nnm a");
  // ties: rows 0 2 4 10, f = 2 (2 neighbours): row 1 is at 4 from rows 0 and 2
  // -> row 0 (lowest index) -> (2+0)/2 = 1; row 2: 4(2) vs 36(10) -> 3.
  Rows<T> b(4, 1, {0, 2, 4, 10});
  check_vec(lib_nnm(b, 2), {1.0, 1.0, 3.0, 7.0}, "nnm tie");
  // A NaN row becomes the mean of the n-f lowest-index finite rows; it is
  // never mixed into the others: rows 0 NaN 3 10, f = 1:
  //   row 0: {0, 2(3), 3(10)} -> 13/3; row 1 (NaN): {0, 2, 3} -> 13/3;
  //   row 2: {0, 2, 3} -> 13/3; row 3: {0, 2, 3} -> 13/3
  Rows<T> c(4, 1, {0, NaN, 3, 10});
  check_vec(lib_nnm(c, 1), {13.0 / 3, 13.0 / 3, 13.0 / 3, 13.0 / 3}, "nnm NaN row");
  // hand7, f = 2: row 0 -> {0,2,3,5,6} = (13/5, 13/5); row 1 -> {1,2,3,4,6} = (1, -3/5);
  // rows 2..6 -> {2,3,4,5,6} = (2/5, 2/5)
  Rows<T> h(7, 2, kHand7);
  check_vec(lib_nnm(h, 2), {2.6, 2.6, 1.0, -0.6, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4}, "nnm hand7");
  // n = 1, f = 0: the row itself.
  Rows<T> one(1, 3, {1, 2, 3});
  check_vec(lib_nnm(one, 0), {1, 2, 3}, "nnm n=1");
}
TEST_CASE("nnm: hand cases, ties, a NaN row") {
  hand_nnm<float>();
  hand_nnm<double>();
}

// =============================================================================
// every rule against the naive reference, with non-finite rows planted
// =============================================================================

enum class Bad { kNanRow, kOneNan, kPosInf, kNegInfTail, kHugeFinite };

template <typename T>
void corrupt(Rows<T>& r, std::size_t i, Bad kind, Rng& rng) {
  const std::size_t d = r.d();
  switch (kind) {
    case Bad::kNanRow:
      for (auto& x : r.data[i]) x = T(NaN);
      break;
    case Bad::kOneNan:  // an otherwise perfectly central row with one NaN coordinate
      for (std::size_t k = 0; k < d; ++k) r.data[i][k] = T(0);
      r.data[i][rng.below(d)] = T(NaN);
      break;
    case Bad::kPosInf:
      r.data[i][rng.below(d)] = T(Inf);
      break;
    case Bad::kNegInfTail:
      r.data[i][d - 1] = T(-Inf);
      break;
    case Bad::kHugeFinite:  // finite but enormous: not "non-finite", just far
      for (auto& x : r.data[i]) x = T(std::is_same<T, float>::value ? 1e30 : 1e200);
      break;
  }
}

template <typename T>
void rules_vs_reference(std::size_t n, std::size_t f, std::size_t d, std::size_t nbad, std::uint64_t seed) {
  Rng rng(seed);
  auto r = gaussian_rows<T>(n, d, seed);
  std::size_t nonfinite = 0;
  for (std::size_t b = 0; b < nbad; ++b) {
    const std::size_t i = b == 0 ? 0 : rng.below(n);  // index 0 always among them
    const Bad kind = Bad(rng.below(5));
    corrupt(r, i, kind, rng);
  }
  const Ref R = ref_distances(r);
  for (bool fi : R.fin) nonfinite += fi ? 0 : 1;
  const std::string what = std::string(std::is_same<T, float>::value ? "float" : "double") + " n=" +
                           std::to_string(n) + " f=" + std::to_string(f) + " d=" + std::to_string(d) +
                           " nonfinite=" + std::to_string(nonfinite) + " seed=" + std::to_string(seed);
  const bool robust = nonfinite <= f;

  // krum
  const auto krank = ref_krum_rank(R, f);
  const auto k_out = lib_krum(r, f);
  CHECK_MSG(same_bits(k_out.data(), r.ptr[krank[0]], d), "krum " + what);
  if (robust) CHECK_MSG(all_finite(k_out) && R.fin[krank[0]], "krum finite " + what);
  // multi-krum, m = 1, default, n-f
  for (std::size_t m : {std::size_t(1), n - f - 2, n - f}) {
    std::vector<std::size_t> sel(krank.begin(), krank.begin() + long(m));
    const auto out = lib_multi_krum(r, f, m);
    CHECK_MSG(same_bits(out, ref_mean(r.ptr, sel, d)), "multi-krum m=" + std::to_string(m) + " " + what);
    if (robust) CHECK_MSG(all_finite(out), "multi-krum finite " + what);
  }
  // nnm
  {
    const auto out = lib_nnm(r, f);
    bool same = true, fin = true;
    for (std::size_t i = 0; i < n; ++i) {
      const auto want = ref_mean(r.ptr, ref_nnm_sel(R, f, i), d);
      if (!same_bits(out.data() + i * d, want.data(), d)) same = false;
      for (std::size_t k = 0; k < d; ++k) fin = fin && std::isfinite(out[i * d + k]);
    }
    CHECK_MSG(same, "nnm " + what);
    if (robust) CHECK_MSG(fin, "nnm finite " + what);
  }
  // mda (n >= 2f+1)
  if (n >= 2 * f + 1 && n <= 13) {
    const auto sel = ref_mda_sel(R, f);
    const auto out = lib_mda(r, f);
    CHECK_MSG(same_bits(out, ref_mean(r.ptr, sel, d)), "mda " + what);
    if (robust) CHECK_MSG(all_finite(out), "mda finite " + what);
  }
  // bulyan, bulyan-multikrum (n >= 4f+3)
  if (n >= 4 * f + 3) {
    auto sel = ref_bulyan_sel(R, f);
    std::sort(sel.begin(), sel.end());
    std::vector<const T*> srows;
    for (std::size_t i : sel) srows.push_back(r.ptr[i]);
    const auto out = lib_bulyan(r, f);
    CHECK_MSG(same_bits(out, ref_coordinate_phase(srows, d, sel.size() - 2 * f)), "bulyan " + what);
    if (robust) {
      CHECK_MSG(all_finite(out), "bulyan finite " + what);
      for (std::size_t i : sel) CHECK_MSG(R.fin[i], "bulyan selected a non-finite row " + what);
    }
    const std::size_t theta = n - 2 * f - 2;
    // The rule subtracts distances from scores: rows whose scores are equal in
    // exact arithmetic (e.g. the last two rows, each scored by their mutual
    // distance) are ranked by the rounding of those subtractions, so the
    // reference selection runs on the library's own distance matrix (itself
    // checked against the exact one above and in the pairwise_sqdist tests).
    const Ref RL = ref_from_matrix(lib_D(r), n);
    for (std::size_t m : {theta, n - f - 2}) {
      const auto sets = ref_bmk_sets(RL, f, m);
      std::vector<std::vector<T>> contrib;
      for (const auto& s : sets) contrib.push_back(ref_mean(r.ptr, s, d));
      std::vector<const T*> crows;
      for (const auto& c : contrib) crows.push_back(c.data());
      const auto bout = lib_bmk(r, f, m);
      CHECK_MSG(same_bits(bout, ref_upper_phase(crows, d, theta - 2 * f)),
                "bulyan-multikrum m=" + std::to_string(m) + " " + what);
      if (robust) CHECK_MSG(all_finite(bout), "bulyan-multikrum finite " + what);
    }
  }
}

TEST_CASE("all rules vs naive reference on random data, up to f non-finite rows (never selected, never mixed)") {
  std::uint64_t seed = 100;
  const std::size_t ds[] = {1, 7, 1013};
  for (std::size_t d : ds)
    for (std::size_t f : {0, 1, 2})
      for (std::size_t n : {4 * f + 3, 4 * f + 5, 2 * f + 3})
        for (std::size_t nbad = 0; nbad <= f; ++nbad) {
          rules_vs_reference<float>(n, f, d, nbad, ++seed);
          rules_vs_reference<double>(n, f, d, nbad, ++seed);
        }
  // one larger d (several reduction blocks + tail)
  rules_vs_reference<float>(11, 2, 2 * 4096 + 13, 2, ++seed);
  rules_vs_reference<double>(11, 2, 2 * 4096 + 13, 1, ++seed);
  // more rows: bulyan-multikrum's rounds share prefixes (the means' trie
  // path), the float Gram kernels (lane-wise at 20, packed at 40)
  rules_vs_reference<float>(20, 4, 4096 + 77, 1, ++seed);
  rules_vs_reference<double>(20, 4, 1013, 0, ++seed);
  rules_vs_reference<float>(40, 8, 1013, 2, ++seed);
}

TEST_CASE("more than f non-finite rows: finite rows still ranked first, no crash") {
  // n = 7, f = 1 but three NaN rows: krum's choice is still a finite row.
  Rows<double> r(7, 2, {NaN, 0, 5, 5, 0, NaN, 1, 1, Inf, 0, 2, 2, 0, 0});
  const auto out = lib_krum(r, 1);
  CHECK(all_finite(out));
  // all rows non-finite: nothing finite to choose; the rules still return
  // (the output is then non-finite, the honest answer).
  Rows<double> all(5, 1, {NaN, NaN, Inf, -Inf, NaN});
  (void)lib_krum(all, 1);
  (void)lib_multi_krum(all, 1, 2);
  (void)lib_mda(all, 2);
  (void)lib_nnm(all, 2);
  Rows<double> all7(7, 1, {NaN, NaN, Inf, -Inf, NaN, NaN, NaN});
  (void)lib_bulyan(all7, 1);
  (void)lib_bmk(all7, 1, 3);
  CHECK(true);
}

// =============================================================================
// determinism, row pointers, public API
// =============================================================================

template <typename T>
void determinism() {
  const std::size_t n = 11, f = 2, d = 3 * 4096 + 77;
  auto r = gaussian_rows<T>(n, d, 4242);
  r.data[4][100] = T(NaN);
  struct Out {
    std::vector<double> D;
    std::vector<T> k, mk, b, bmk, mda, nnm;
  };
  auto run = [&]() {
    Out o;
    o.D = lib_D(r);
    o.k = lib_krum(r, f);
    o.mk = lib_multi_krum(r, f, n - f - 2);
    o.b = lib_bulyan(r, f);
    o.bmk = lib_bmk(r, f, n - f - 2);
    o.mda = lib_mda(r, f);
    o.nnm = lib_nnm(r, f);
    return o;
  };
  set_threads(1);
  const Out a = run();
  for (int t : {2, 3}) {
    set_threads(t);
    const Out b = run();
    const std::string tt = " threads=" + std::to_string(t);
    CHECK_MSG(same_bits(a.D, b.D), "D" + tt);
    CHECK_MSG(same_bits(a.k, b.k), "krum" + tt);
    CHECK_MSG(same_bits(a.mk, b.mk), "multi-krum" + tt);
    CHECK_MSG(same_bits(a.b, b.b), "bulyan" + tt);
    CHECK_MSG(same_bits(a.bmk, b.bmk), "bulyan-multikrum" + tt);
    CHECK_MSG(same_bits(a.mda, b.mda), "mda" + tt);
    CHECK_MSG(same_bits(a.nnm, b.nnm), "nnm" + tt);
  }
}
TEST_CASE("bitwise determinism across thread counts (1, 2, 3)") {
#ifdef _OPENMP
  const int saved = omp_get_max_threads();
#endif
  determinism<float>();
  determinism<double>();
#ifdef _OPENMP
  omp_set_num_threads(saved);
#endif
}

template <typename T>
void api_contiguous_vs_rows() {
  const std::size_t n = 11, f = 2, d = 1013;
  auto r = gaussian_rows<T>(n, d, 99);
  std::vector<T> flat(n * d);
  for (std::size_t i = 0; i < n; ++i) std::copy(r.data[i].begin(), r.data[i].end(), flat.begin() + long(i * d));
  GradView vc, vr;
  vc.data = flat.data();
  vr.rows = reinterpret_cast<const void* const*>(r.ptr.data());
  vc.n = vr.n = n;
  vc.d = vr.d = d;
  vc.dtype = vr.dtype = std::is_same<T, float>::value ? DType::kFloat32 : DType::kFloat64;
  for (const char* name : {"krum", "multi-krum", "bulyan", "bulyan-multikrum", "mda"}) {
    RuleConfig cfg;
    CHECK(make_rule(name, std::int64_t(f), {}, &cfg).ok());
    std::vector<T> o1(d), o2(d);
    Status s1 = aggregate(cfg, vc, o1.data());
    Status s2 = aggregate(cfg, vr, o2.data());
    CHECK_MSG(s1.ok() && s2.ok(), s1.message() + " / " + s2.message());
    CHECK_MSG(same_bits(o1, o2), name);
    CHECK_MSG(all_finite(o1), name);
  }
  // the API result is the kernel's result
  {
    RuleConfig cfg;
    CHECK(make_rule("krum", std::int64_t(f), {}, &cfg).ok());
    std::vector<T> o(d);
    CHECK(aggregate(cfg, vc, o.data()).ok());
    CHECK(same_bits(o, lib_krum(r, f)));
  }
  PreConfig pc;
  CHECK(make_pre("nnm", std::int64_t(f), {}, &pc).ok());
  std::vector<T> p1(n * d), p2(n * d);
  CHECK(preaggregate(pc, vc, p1.data()).ok());
  CHECK(preaggregate(pc, vr, p2.data()).ok());
  CHECK(same_bits(p1, p2));
  CHECK(same_bits(p1, lib_nnm(r, f)));
}
TEST_CASE("public API: contiguous block == separate row allocations (bitwise)") {
  api_contiguous_vs_rows<float>();
  api_contiguous_vs_rows<double>();
}

// The distance kernels read a tile in place when every row's slice is on a
// 64-byte line and otherwise (from 16 rows, and the last tile of d always)
// stage it in an aligned scratch tile (distance.cpp: view_tile). Same values,
// same lanes: D must be bitwise the same at every placement of the rows, for
// every distance pass (exact kernel, lane-wise and packed float Gram kernels,
// the exact double rerun). Placements: rows on lines (the in-place reference),
// all rows 1 or 4 elements past a line, and each row at its own offset.
template <typename T>
void placement_case(std::size_t n, std::size_t d) {
  const auto r = gaussian_rows<T>(n, d, 31 * n + d);
  std::vector<T> pool(n * (d + 64) + 64);
  auto place = [&](std::size_t shift, bool per_row) {
    T* base = pool.data();
    while (reinterpret_cast<std::uintptr_t>(base) % 64) ++base;
    const std::size_t stride = (d + 16 + 15) / 16 * 16;  // on a line
    std::vector<const T*> p(n);
    for (std::size_t i = 0; i < n; ++i) {
      T* row = base + i * stride + (per_row ? (shift + i) % 5 : shift);
      std::copy(r.data[i].begin(), r.data[i].end(), row);
      p[i] = row;
    }
    return p;
  };
  auto passes = [&](const std::vector<const T*>& p) {
    std::vector<double> out;
    std::vector<double> D(n * n), sq(n);
    std::size_t ex = 0, dpb = 0;
    cpu::pairwise_sqdist<T>(p.data(), n, d, D.data());
    out.insert(out.end(), D.begin(), D.end());
    cpu::pairwise_sqdist_select<T>(p.data(), n, d, D.data(), &ex, &dpb);
    out.insert(out.end(), D.begin(), D.end());
    cpu::pairwise_sqdist_norms<T>(p.data(), n, d, D.data(), sq.data());
    out.insert(out.end(), D.begin(), D.end());
    out.insert(out.end(), sq.begin(), sq.end());
    cpu::pairwise_sqdist_exact_double<T>(p.data(), n, d, D.data());
    out.insert(out.end(), D.begin(), D.end());
    return out;
  };
  const std::vector<double> ref = passes(place(0, false));
  for (std::size_t shift : {1, 4})
    for (bool per_row : {false, true})
      CHECK_MSG(same_bits(passes(place(shift, per_row)), ref),
                "n=" + std::to_string(n) + " d=" + std::to_string(d) + " shift=" + std::to_string(shift) +
                    (per_row ? " per row" : " all rows") + (sizeof(T) == 4 ? " float" : " double"));
}
TEST_CASE("distance passes: same bits whatever the rows' placement (tiles staged or read in place)") {
  for (std::size_t n : {5, 8, 15, 16, 20, 32, 40})
    for (std::size_t d : {1, 33, 1024, 4112, 9001}) {
      placement_case<float>(n, d);
      placement_case<double>(n, d);
    }
}

// =============================================================================
// timings (not a test: printed with PYAGG_TIMING=1)
// =============================================================================

TEST_CASE("timings at n=20, f=4, d=1e6 float32 (PYAGG_TIMING=1)") {
  if (!std::getenv("PYAGG_TIMING")) return;
  const std::size_t n = 20, f = 4, d = 1000000;
  const int reps = std::getenv("PYAGG_TIMING_REPS") ? std::atoi(std::getenv("PYAGG_TIMING_REPS")) : 7;
  Rows<float> r = gaussian_rows<float>(n, d, 1);
  std::vector<double> D(n * n);
  std::vector<float> out(n * d);
  const double bytes = double(n) * double(d) * sizeof(float);
  auto time = [&](const char* name, auto fn) {
    fn();  // warm-up
    double best = 1e300;
    for (int k = 0; k < reps; ++k) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      const auto t1 = std::chrono::steady_clock::now();
      best = std::min(best, std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::printf("  %-18s %9.2f ms  %7.2f GB/s\n", name, best, bytes / best / 1e6);
  };
#ifdef _OPENMP
  std::printf("  threads: %d\n", omp_get_max_threads());
#endif
  time("pairwise_sqdist", [&] { cpu::pairwise_sqdist<float>(r.p(), n, d, D.data()); });
  time("krum", [&] { cpu::krum<float>(r.p(), n, d, f, out.data()); });
  time("multi-krum", [&] { cpu::multi_krum<float>(r.p(), n, d, f, n - f - 2, out.data()); });
  time("bulyan", [&] { cpu::bulyan<float>(r.p(), n, d, f, out.data()); });
  time("bulyan-multikrum", [&] { cpu::bulyan_multikrum<float>(r.p(), n, d, f, n - f - 2, out.data()); });
  time("mda", [&] { cpu::mda<float>(r.p(), n, d, f, out.data()); });
  time("nnm", [&] { cpu::nnm<float>(r.p(), n, d, f, out.data()); });
}

CHECK_MAIN()

// pairwise_sqdist_norms: the Gram path (n > 32) takes each row's block sums of
// squares tile by tile as it packs them (reduce.h sumsq_lanes /
// sumsq_tail_fold); the exact path (n <= 32) calls block_sumsq_finite after
// each block. Both must give row_sqnorms's bits: the same rows' norms from 48
// rows at once and from two calls of 24 rows agree bitwise (several blocks, a
// ragged last block whose length is not a multiple of 16; float and double).
template <typename T>
void norms_gram_vs_exact_path() {
  const std::size_t n = 48, h = 24;
  for (std::size_t d : {std::size_t(7), std::size_t(4096 * 2 + 37), std::size_t(4096 * 3)}) {
    auto r = gaussian_rows<T>(n, d, 99 + d);
    std::vector<double> D(n * n), sq(n), Dh(h * h), sqa(h), sqb(h);
    cpu::pairwise_sqdist_norms<T>(r.p(), n, d, D.data(), sq.data());
    cpu::pairwise_sqdist_norms<T>(r.p(), h, d, Dh.data(), sqa.data());
    cpu::pairwise_sqdist_norms<T>(r.p() + h, h, d, Dh.data(), sqb.data());
    for (std::size_t i = 0; i < h; ++i) {
      CHECK(std::memcmp(&sq[i], &sqa[i], sizeof(double)) == 0);
      CHECK(std::memcmp(&sq[h + i], &sqb[i], sizeof(double)) == 0);
    }
  }
}
TEST_CASE("pairwise_sqdist_norms: Gram-path norms (taken per tile) = exact-path norms, bitwise") {
  norms_gram_vs_exact_path<float>();
  norms_gram_vs_exact_path<double>();
}

// bulyan-multikrum's set means may add a set's rows in another order (rows
// that more sets name first: MeanSets::finish by_frequency, whose trie shares
// more), through mean_sets_chunks' exact_alt, only on chunks where every sum
// is exact (sums_exact): the bits are index order's everywhere. Nested sets
// {k..11} put the rows in reverse index order by frequency; in the middle
// chunk rows 0 and 1 hold +2^60 and -2^60, so sets 0 and 1 round there and
// the two orders differ (checked: the test could fail).
TEST_CASE("set means: rows reordered by frequency only on chunks whose sums are exact, same bits") {
  const std::size_t n = 12, chunk = 64, d = 3 * chunk + 5;
  std::vector<float> X(n * d);
  std::uint64_t st = 99;
  for (auto& x : X) {
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    x = float(std::int64_t(st >> 40) - (1 << 23)) * 0x1p-21f;
  }
  for (std::size_t c = chunk; c < 2 * chunk; ++c) {
    X[0 * d + c] = 0x1p60f;
    X[1 * d + c] = -0x1p60f;
  }
  std::vector<const float*> rows(n);
  for (std::size_t i = 0; i < n; ++i) rows[i] = X.data() + i * d;
  cpu::MeanSets ms, fs;
  std::vector<std::vector<std::size_t>> sets;
  for (std::size_t k = 0; k + 2 < n; ++k) {
    std::vector<std::size_t> set;
    for (std::size_t r = k; r < n; ++r) set.push_back(r);
    sets.push_back(set);
    ms.add(set.data(), set.size());
    fs.add(set.data(), set.size());
  }
  ms.finish(n);
  fs.finish(n, true);
  CHECK_MSG(!fs.trie.empty() && 4 * fs.additions <= ms.additions, "the reordered sets take the trie, with few additions");
  std::vector<std::size_t> used(n);
  for (std::size_t r = 0; r < n; ++r) used[r] = r;
  CHECK(cpu::sums_exact(rows.data(), used.data(), n, 0, chunk, n));
  CHECK(!cpu::sums_exact(rows.data(), used.data(), n, chunk, chunk, n));
  CHECK(cpu::sums_exact(rows.data(), used.data() + 2, n - 2, chunk, chunk, n));  // without rows 0 and 1
  CHECK(cpu::sums_exact(rows.data(), used.data(), n, 2 * chunk, d - 2 * chunk, n));
  const std::size_t ns = sets.size();
  auto run = [&](const cpu::MeanSets& m, const cpu::MeanSets* alt) {
    std::vector<float> out(ns * d);
    cpu::mean_sets_chunks<float>(
        m, rows.data(), 0, d, chunk, 2, [&](std::size_t k, std::size_t c0, std::size_t) { return out.data() + k * d + c0; },
        [](std::size_t, std::size_t, std::size_t) {}, alt);
    return out;
  };
  const auto by_index = run(ms, nullptr), gated = run(ms, &fs), reordered = run(fs, nullptr);
  CHECK_MSG(std::memcmp(gated.data(), by_index.data(), by_index.size() * sizeof(float)) == 0,
            "exact_alt: index order's bits on every chunk");
  bool differs = false;
  for (std::size_t k = 0; k < 2; ++k)
    for (std::size_t c = chunk; c < 2 * chunk; ++c) differs = differs || reordered[k * d + c] != by_index[k * d + c];
  CHECK_MSG(differs, "reordering the rounding chunk changes its bits (the test can fail)");
  for (std::size_t k = 0; k < ns; ++k)
    for (std::size_t c : {std::size_t(0), std::size_t(63), 2 * chunk, d - 1})
      CHECK(reordered[k * d + c] == by_index[k * d + c]);  // exact chunks: any order
  // a NaN makes a chunk inexact (its payload depends on the order)
  X[5 * d + 3] = std::numeric_limits<float>::quiet_NaN();
  CHECK(!cpu::sums_exact(rows.data(), used.data(), n, 0, chunk, n));
}
