// Iterative rules (engine/src/cpu/iterative.cpp) and the deterministic blocked
// reductions (engine/src/cpu/reduce.h): hand-computed Weiszfeld and
// centered-clipping steps (values chosen so every double operation is exact,
// whatever FMA contraction the compiler does), non-finite rows, a scalar
// reference on random data, float32 and float64, row pointers, determinism
// across thread counts. Set PYAGG_TIMING=1 to print timings at n=20, d=1e6.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "check.h"
#include "testdata.h"
#include "cpu/cpu_backend.h"
#include "cpu/reduce.h"
#include "common/select_iterative.h"
#include "pyagg/rules.h"

using namespace pyagg;
namespace reduce = pyagg::cpu::reduce;

namespace {

using testdata::Inf;
using testdata::NaN;
using testdata::Rows;

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

std::string fmtv(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

template <typename T>
Rows<T> gaussian_rows(std::size_t n, std::size_t d, std::uint64_t seed, double scale = 1.0) {
  Rows<T> r(n, d);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, scale);
  for (auto& row : r.data)
    for (auto& v : row) v = static_cast<T>(g(rng));
  return r;
}

// Plain scalar references (straight loops, no blocking): agree with the engine
// to rounding.
template <typename T>
std::vector<double> ref_geometric_median(const Rows<T>& r, std::size_t n, std::size_t d, double nu, int max_iter,
                                         double tol) {
  std::vector<double> z(d);
  for (std::size_t j = 0; j < d; ++j) {
    std::vector<double> v;
    for (std::size_t i = 0; i < n; ++i)
      if (std::isfinite(double(r.data[i][j]))) v.push_back(r.data[i][j]);
    std::sort(v.begin(), v.end());
    const std::size_t k = v.size();
    z[j] = k == 0 ? 0.0 : k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;
  }
  std::vector<bool> fin(n, true);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < d; ++j) fin[i] = fin[i] && std::isfinite(double(r.data[i][j]));
  for (int it = 0; it < max_iter; ++it) {
    std::vector<double> w(n, 0.0);
    double W = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (!fin[i]) continue;
      double s = 0;
      for (std::size_t j = 0; j < d; ++j) s += (r.data[i][j] - z[j]) * (r.data[i][j] - z[j]);
      w[i] = 1.0 / std::max(nu, std::sqrt(s));
      W += w[i];
    }
    if (W == 0) break;
    std::vector<double> zn(d, 0.0);
    for (std::size_t i = 0; i < n; ++i)
      if (fin[i])
        for (std::size_t j = 0; j < d; ++j) zn[j] += w[i] * r.data[i][j];
    double dl = 0, zz = 0;
    for (std::size_t j = 0; j < d; ++j) {
      zn[j] /= W;
      dl += (zn[j] - z[j]) * (zn[j] - z[j]);
      zz += z[j] * z[j];
    }
    z = zn;
    if (std::sqrt(dl) <= tol * std::sqrt(zz)) break;
  }
  return z;
}

template <typename T>
std::vector<double> ref_centered_clipping(const Rows<T>& r, std::size_t n, std::size_t d, double tau, int L,
                                          const T* state) {
  std::vector<double> v(d, 0.0);
  if (state)
    for (std::size_t j = 0; j < d; ++j) v[j] = state[j];
  std::vector<bool> fin(n, true);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < d; ++j) fin[i] = fin[i] && std::isfinite(double(r.data[i][j]));
  for (int it = 0; it < L; ++it) {
    std::vector<double> acc(d, 0.0);
    for (std::size_t i = 0; i < n; ++i) {
      if (!fin[i]) continue;
      double s = 0;
      for (std::size_t j = 0; j < d; ++j) s += (r.data[i][j] - v[j]) * (r.data[i][j] - v[j]);
      const double nr = std::sqrt(s);
      const double c = nr == 0 ? 1.0 : std::min(1.0, tau / nr);
      for (std::size_t j = 0; j < d; ++j) acc[j] += c * (r.data[i][j] - v[j]);
    }
    for (std::size_t j = 0; j < d; ++j) v[j] += (1.0 / double(n)) * acc[j];
  }
  return v;
}

template <typename T>
double max_rel_err(const std::vector<T>& got, const std::vector<double>& want) {
  double scale = 0, err = 0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  for (std::size_t j = 0; j < got.size(); ++j) err = std::max(err, std::fabs(double(got[j]) - want[j]));
  return err / std::max(scale, 1e-300);
}

}  // namespace

// ------------------------------------------------------------- reduce.h ---
TEST_CASE("reduce: blocked sums follow the documented order") {
  // Lane structure: acc[t % 16] += term(t), halving fold; blocks left to right.
  std::vector<double> x(reduce::kLanes * 3 + 5);
  for (std::size_t t = 0; t < x.size(); ++t) x[t] = double(t + 1);
  double acc[reduce::kLanes] = {};
  for (std::size_t t = 0; t < x.size(); ++t) acc[t % reduce::kLanes] += x[t] * x[t];
  for (std::size_t h = reduce::kLanes / 2; h >= 1; h /= 2)
    for (std::size_t l = 0; l < h; ++l) acc[l] += acc[l + h];
  CHECK(reduce::block_sumsq(x.data(), x.size()) == acc[0]);
  const double n = double(x.size());
  CHECK(reduce::block_sumsq(x.data(), x.size()) == n * (n + 1) * (2 * n + 1) / 6);  // exact integers
  std::vector<float> y(x.begin(), x.end());
  CHECK(reduce::block_dot(x.data(), y.data(), x.size()) == acc[0]);
  CHECK(reduce::block_sqdist(x.data(), std::vector<double>(x.size(), 0.0).data(), x.size()) == acc[0]);
  bool fin = false;
  CHECK(reduce::block_sumsq_finite(y.data(), y.size(), &fin) == acc[0] && fin);
  y[7] = float(NaN);
  reduce::block_sumsq_finite(y.data(), y.size(), &fin);
  CHECK(!fin);
  y[7] = float(-Inf);
  CHECK(std::isinf(reduce::block_sumsq_finite(y.data(), y.size(), &fin)) && !fin);
}

TEST_CASE("reduce: whole-vector helpers, row norms, thread invariance") {
  const std::size_t d = 3 * cpu::kReduceBlock + 77, n = 3;
  Rows<float> r = gaussian_rows<float>(n, d, 3);
  double part = 0;
  for (std::size_t b = 0; b < reduce::num_blocks(d); ++b)
    part += reduce::block_sumsq(r.data[0].data() + reduce::block_begin(b), reduce::block_len(b, d));
  CHECK(reduce::sqnorm(r.data[0].data(), d) == part);
  CHECK(reduce::num_blocks(d) == 4 && reduce::block_len(3, d) == 77);
  r.data[2][d - 1] = float(Inf);
  double sq[3];
  unsigned char fin[3];
  reduce::row_sqnorms(r.p(), n, d, sq, fin);
  CHECK(sq[0] == part && fin[0] == 1 && fin[1] == 1 && fin[2] == 0);
#ifdef _OPENMP
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double a1 = reduce::sqdist(r.data[0].data(), r.data[1].data(), d);
  const double b1 = reduce::dot(r.data[0].data(), r.data[1].data(), d);
  omp_set_num_threads(2);
  CHECK(reduce::sqdist(r.data[0].data(), r.data[1].data(), d) == a1);
  CHECK(reduce::dot(r.data[0].data(), r.data[1].data(), d) == b1);
  omp_set_num_threads(saved);
#endif
}

// ------------------------------------------------------ geometric median ---
TEST_CASE("geometric-median: one hand-computed Weiszfeld step") {
  // rows (1,1), (5,1), (1,3); z0 = coordinate median = (1,1); nu = 1:
  // distances 0, 4, 2 -> w = 1/max(1, .) = 1, 1/4, 1/2; W = 1.75
  // z1 = (1 + 5/4 + 1/2, 1 + 1/4 + 3/2) / 1.75 = (2.75, 2.75) / 1.75
  const std::vector<double> flat = {1, 1, 5, 1, 1, 3};
  const double z1 = 2.75 / 1.75;
  Rows<double> rd(3, 2, flat);
  Rows<float> rf(3, 2, flat);
  std::vector<double> od(2);
  std::vector<float> of(2);
  cpu::geometric_median(rd.p(), 3, 2, 1.0, 1, 1e-7, od.data());
  cpu::geometric_median(rf.p(), 3, 2, 1.0, 1, 1e-7, of.data());
  CHECK_MSG(od[0] == z1 && od[1] == z1, fmtv(od[0]) + " " + fmtv(od[1]));
  CHECK(of[0] == float(z1) && of[1] == float(z1));
  // tol so large that the first update stops (||z1 - z0|| <= tol ||z0||):
  // same as max_iter = 1; more iterations move on.
  std::vector<double> o2(2);
  cpu::geometric_median(rd.p(), 3, 2, 1.0, 100, 1e300, o2.data());
  CHECK(o2 == od);
  cpu::geometric_median(rd.p(), 3, 2, 1.0, 2, 1e-7, o2.data());
  CHECK(o2 != od);
  // ||z0|| = 0: the relative test cannot stop before max_iter (spec: <= tol*||z||)
  Rows<double> r0(3, 2, {0, 0, 4, 0, 0, 2});
  cpu::geometric_median(r0.p(), 3, 2, 1.0, 1, 1e-7, od.data());
  CHECK(od[0] == 1.0 / 1.75 && od[1] == 1.0 / 1.75);
  cpu::geometric_median(r0.p(), 3, 2, 1.0, 100, 1e300, o2.data());
  CHECK(o2 != od);
  // a row of NaN/inf everywhere gets weight 0 and is absent from the median:
  // identical bits
  Rows<double> rn(4, 2, {0, 0, NaN, Inf, 4, 0, 0, 2});
  cpu::geometric_median(rn.p(), 4, 2, 1.0, 1, 1e-7, o2.data());
  CHECK(o2 == od);
  // the converged point of 4 symmetric points is their centre, exactly
  Rows<double> sq(4, 2, {-1, -1, 1, -1, -1, 1, 1, 1});
  cpu::geometric_median(sq.p(), 4, 2, 1e-6, 100, 1e-7, o2.data());
  CHECK(o2[0] == 0.0 && o2[1] == 0.0);
}

TEST_CASE("geometric-median: n = 1, all rows non-finite, robustness") {
  Rows<float> one(1, 5, {1, -2, 3.5, 0, 7});
  std::vector<float> o(5);
  cpu::geometric_median(one.p(), 1, 5, 1e-6, 100, 1e-7, o.data());
  CHECK(o == one.data[0]);
  Rows<float> bad(2, 3, {NaN, Inf, -Inf, Inf, NaN, NaN});
  cpu::geometric_median(bad.p(), 2, 3, 1e-6, 100, 1e-7, o.data());
  CHECK(o[0] == 0 && o[1] == 0 && o[2] == 0);
  // 5 honest rows near 1, 4 Byzantine rows far away: stays near the honest rows.
  const std::size_t d = 1000 + 13, n = 9;
  Rows<double> r = gaussian_rows<double>(n, d, 11, 0.01);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < d; ++j) r.data[i][j] += i < 5 ? 1.0 : 1e6 * (i % 2 ? 1 : -1) + 3e5;
  std::vector<double> g(d);
  cpu::geometric_median(r.p(), n, d, 1e-6, 100, 1e-7, g.data());
  double worst = 0;
  for (double v : g) worst = std::max(worst, std::fabs(v - 1.0));
  CHECK_MSG(worst < 0.1, fmtv(worst));
}

TEST_CASE("geometric-median: random data vs the scalar reference, f32/f64, tails") {
  for (std::size_t d : std::vector<std::size_t>{1, 7, 33, 1013, 2 * cpu::kReduceBlock + 5}) {
    for (std::size_t n : {2, 5, 8}) {
      Rows<double> rd = gaussian_rows<double>(n, d, 100 + n + d);
      Rows<float> rf = gaussian_rows<float>(n, d, 100 + n + d);
      if (n == 8) rd.data[3][d / 2] = NaN, rf.data[3][d / 2] = float(Inf);
      std::vector<double> od(d);
      std::vector<float> of(d);
      cpu::geometric_median(rd.p(), n, d, 1e-6, 200, 1e-12, od.data());
      cpu::geometric_median(rf.p(), n, d, 1e-6, 200, 1e-12, of.data());
      const double ed = max_rel_err(od, ref_geometric_median(rd, n, d, 1e-6, 200, 1e-12));
      const double ef = max_rel_err(of, ref_geometric_median(rf, n, d, 1e-6, 200, 1e-12));
      CHECK_MSG(ed < 1e-8, "f64 n=" + std::to_string(n) + " d=" + std::to_string(d) + " err " + fmtv(ed));
      CHECK_MSG(ef < 1e-5, "f32 n=" + std::to_string(n) + " d=" + std::to_string(d) + " err " + fmtv(ef));
      // few iterations: the same steps as the reference
      cpu::geometric_median(rd.p(), n, d, 1e-6, 3, 0.0, od.data());
      const double e3 = max_rel_err(od, ref_geometric_median(rd, n, d, 1e-6, 3, 0.0));
      CHECK_MSG(e3 < 1e-12, "3 steps n=" + std::to_string(n) + " d=" + std::to_string(d) + " err " + fmtv(e3));
      for (double v : od) CHECK(std::isfinite(v));
    }
  }
}

// ----------------------------------------------------- centered clipping ---
TEST_CASE("centered-clipping: hand-computed steps, state, non-finite rows") {
  // rows (0,0), (-8,-6), (-4,-3); tau = 3.75:
  //  L=1 from v=0: norms 0, 10, 5 -> c = 1, 3/8, 3/4 ->
  //     v = ((-3,-2.25) + (-3,-2.25)) / 3 = (-2, -1.5)
  //  L=2: y = (2,1.5), (-6,-4.5), (-2,-1.5); norms 2.5, 7.5, 2.5 -> c = 1, 1/2, 1
  //     v = (-2,-1.5) + ((2,1.5) + (-3,-2.25) + (-2,-1.5)) / 3 = (-3, -2.25)
  const std::vector<double> flat = {0, 0, -8, -6, -4, -3};
  Rows<double> rd(3, 2, flat);
  Rows<float> rf(3, 2, flat);
  std::vector<double> od(2);
  std::vector<float> of(2);
  cpu::centered_clipping(rd.p(), 3, 2, 3.75, 1, static_cast<const double*>(nullptr), od.data());
  CHECK_MSG(od[0] == -2.0 && od[1] == -1.5, fmtv(od[0]) + " " + fmtv(od[1]));
  cpu::centered_clipping(rd.p(), 3, 2, 3.75, 2, static_cast<const double*>(nullptr), od.data());
  CHECK_MSG(od[0] == -3.0 && od[1] == -2.25, fmtv(od[0]) + " " + fmtv(od[1]));
  cpu::centered_clipping(rf.p(), 3, 2, 3.75, 2, static_cast<const float*>(nullptr), of.data());
  CHECK(of[0] == -3.0f && of[1] == -2.25f);
  // momentum: starting from the L=1 output, one more step = the L=2 output
  const float st[2] = {-2.0f, -1.5f};
  cpu::centered_clipping(rf.p(), 3, 2, 3.75, 1, st, of.data());
  CHECK(of[0] == -3.0f && of[1] == -2.25f);
  // a non-finite row contributes 0 but counts in n = 4: v = (-6,-4.5)/4
  Rows<double> rn(4, 2, {0, 0, -8, -6, NaN, 1, -4, -3});
  cpu::centered_clipping(rn.p(), 4, 2, 3.75, 1, static_cast<const double*>(nullptr), od.data());
  CHECK_MSG(od[0] == -1.5 && od[1] == -1.125, fmtv(od[0]) + " " + fmtv(od[1]));
  // no clipping (tau large): the mean
  cpu::centered_clipping(rd.p(), 3, 2, 1e9, 1, static_cast<const double*>(nullptr), od.data());
  CHECK(od[0] == -4.0 && od[1] == -3.0);
  // every row equal to the state: ||y|| = 0 -> c = 1, v unchanged
  Rows<double> same(2, 2, {1, 2, 1, 2});
  const double s2[2] = {1, 2};
  cpu::centered_clipping(same.p(), 2, 2, 1.0, 3, s2, od.data());
  CHECK(od[0] == 1.0 && od[1] == 2.0);
}

TEST_CASE("centered-clipping: random data vs the scalar reference, state, tails") {
  for (std::size_t d : std::vector<std::size_t>{1, 7, 33, 1013, 2 * cpu::kReduceBlock + 5}) {
    for (std::size_t n : {1, 4, 9}) {
      Rows<double> rd = gaussian_rows<double>(n, d, 7 + n * d);
      Rows<float> rf = gaussian_rows<float>(n, d, 7 + n * d);
      if (n == 9) rd.data[2][0] = -Inf, rf.data[4][d - 1] = float(NaN);
      std::vector<double> sd(d, 0.25);
      std::vector<float> sf(d, -0.5f);
      std::vector<double> od(d);
      std::vector<float> of(d);
      const double tau = 0.3 * std::sqrt(double(d));  // clips some rows
      for (int L : {1, 3}) {
        cpu::centered_clipping(rd.p(), n, d, tau, L, sd.data(), od.data());
        cpu::centered_clipping(rf.p(), n, d, tau, L, sf.data(), of.data());
        const double ed = max_rel_err(od, ref_centered_clipping(rd, n, d, tau, L, sd.data()));
        const double ef = max_rel_err(of, ref_centered_clipping(rf, n, d, tau, L, sf.data()));
        CHECK_MSG(ed < 1e-12, "f64 n=" + std::to_string(n) + " d=" + std::to_string(d) + " err " + fmtv(ed));
        CHECK_MSG(ef < 1e-6, "f32 n=" + std::to_string(n) + " d=" + std::to_string(d) + " err " + fmtv(ef));
        for (double v : od) CHECK(std::isfinite(v));
      }
    }
  }
}

TEST_CASE("centered-clipping in coefficient space: hand case, guard, fallback") {
  // One row x = (3, 4), v0 = 0, n = 1, tau = 1, L = 2 (hand): points p0 = v0,
  // p1 = x, Dx = [[0, 25], [25, 0]]. Step 1: ||x - v|| = 5, c = 1/5, w = (0.8,
  // 0.2). Step 2: ||x - v||^2 = 20 - 8/2 = 16, c = 1/4, w = (0.6, 0.4):
  // v = 0.4 x = (1.2, 1.6).
  const double Dx[4] = {0, 25, 25, 0};
  std::vector<double> w;
  CHECK(selection::centered_clipping_coefficients(Dx, 1, 1, 1.0, 2, 1e-14, 1e3, &w));
  CHECK(w.size() == 2 && std::fabs(w[0] - 0.6) < 1e-15 && std::fabs(w[1] - 0.4) < 1e-15);

  // Cancellation: two rows near (1000, 0), eight NaN rows (they count in n:
  // each step keeps 1 - S/10 of v), v0 = 0, tau = 100: v approaches the rows
  // while w_0 (v0's weight) stays large, so ||x - v||^2 is the difference of
  // terms ~1e6 * w_0; at step 40 they are 8.1x ||x - v||^2 (> 8: float
  // input's limit): the guard refuses (simulated in numpy when the test was
  // written: L = 39 accepted, L = 40 refused).
  const std::size_t d = 2, n = 10;
  Rows<float> r(n, d);
  r.data[0] = {1000.0f, 0.5f};
  r.data[1] = {1000.5f, 0.0f};
  for (std::size_t i = 2; i < n; ++i) r.data[i] = {float(NaN), 0.0f};
  auto sq = [](double a, double b) { return a * a + b * b; };
  const double D3[9] = {0, sq(1000, 0.5), sq(1000.5, 0), sq(1000, 0.5), 0, sq(0.5, 0.5), sq(1000.5, 0),
                        sq(0.5, 0.5), 0};
  CHECK(selection::centered_clipping_coefficients(D3, 2, n, 100.0, 39, 1e-6, 8.0, &w));
  CHECK(!selection::centered_clipping_coefficients(D3, 2, n, 100.0, 40, 1e-6, 8.0, &w));
  // Either way the kernel gives the reference result (L >= 40: direct iteration).
  for (int L : {2, 39, 40, 60}) {
    std::vector<float> of(d);
    const float* none = nullptr;
    cpu::centered_clipping(r.p(), n, d, 100.0, std::int64_t(L), none, of.data());
    const double e = max_rel_err(of, ref_centered_clipping(r, n, d, 100.0, L, none));
    CHECK_MSG(e < 1e-6, "L=" + std::to_string(L) + " err " + fmtv(e));
  }
}

TEST_CASE("centered-clipping, L >= 2 (coefficient space) vs the scalar reference, n up to 40") {
  for (std::size_t d : std::vector<std::size_t>{3, 1013, 2 * cpu::kReduceBlock + 5}) {
    for (std::size_t n : {2, 9, 20, 40}) {
      Rows<double> rd = gaussian_rows<double>(n, d, 11 + n * d);
      Rows<float> rf = gaussian_rows<float>(n, d, 11 + n * d);
      if (n >= 9) rd.data[2][0] = -Inf, rf.data[4][d - 1] = float(NaN);
      std::vector<double> sd(d, 0.25);
      std::vector<float> sf(d, -0.5f);
      std::vector<double> od(d);
      std::vector<float> of(d);
      for (double tau : {0.1 * std::sqrt(double(d)), 0.7 * std::sqrt(double(d)), 1e9}) {
        for (int L : {2, 5, 30}) {
          for (bool st : {false, true}) {
            const double* std_ = st ? sd.data() : nullptr;
            const float* stf = st ? sf.data() : nullptr;
            cpu::centered_clipping(rd.p(), n, d, tau, L, std_, od.data());
            cpu::centered_clipping(rf.p(), n, d, tau, L, stf, of.data());
            const double ed = max_rel_err(od, ref_centered_clipping(rd, n, d, tau, L, std_));
            const double ef = max_rel_err(of, ref_centered_clipping(rf, n, d, tau, L, stf));
            const std::string at = " n=" + std::to_string(n) + " d=" + std::to_string(d) + " L=" + std::to_string(L) +
                                   " tau=" + fmtv(tau) + " state=" + std::to_string(st);
            CHECK_MSG(ed < 1e-12, "f64" + at + " err " + fmtv(ed));
            CHECK_MSG(ef < 1e-6, "f32" + at + " err " + fmtv(ef));
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------- the API ---
TEST_CASE("through the API: contiguous block and row pointers agree, state is used") {
  const std::size_t n = 6, d = 1000 + 13;
  Rows<float> r = gaussian_rows<float>(n, d, 77);
  std::vector<float> block(n * d);
  for (std::size_t i = 0; i < n; ++i) std::copy(r.data[i].begin(), r.data[i].end(), block.begin() + i * d);
  std::vector<const void*> ptrs(r.ptr.begin(), r.ptr.end());
  for (const char* name : {"geometric-median", "centered-clipping"}) {
    RuleConfig c;
    CHECK(make_rule(name, 1, {}, &c).ok());
    GradView a, b;
    a.data = block.data();
    b.rows = ptrs.data();
    a.n = b.n = n;
    a.d = b.d = d;
    std::vector<float> oa(d), ob(d), st(d, 0.5f), oc(d);
    CHECK(aggregate(c, a, oa.data()).ok());
    CHECK(aggregate(c, b, ob.data()).ok());
    CHECK_MSG(same_bits(oa, ob), name);
    CHECK(aggregate(c, a, oc.data(), st.data()).ok());
    if (std::string(name) == "centered-clipping") CHECK(!same_bits(oa, oc));
  }
}

TEST_CASE("same bits with 1 and 2 threads") {
#ifdef _OPENMP
  const std::size_t n = 7, d = 100003;
  Rows<float> rf = gaussian_rows<float>(n, d, 5);
  Rows<double> rd = gaussian_rows<double>(n, d, 6);
  rf.data[3][500] = float(NaN);
  std::vector<float> st(d, 0.1f);
  const int saved = omp_get_max_threads();
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> a(d), b(d);
    std::vector<double> c(d), e(d);
    cpu::geometric_median(rf.p(), n, d, 1e-6, 100, 1e-7, a.data());
    cpu::centered_clipping(rf.p(), n, d, 10.0, 3, st.data(), b.data());
    cpu::geometric_median(rd.p(), n, d, 1e-6, 100, 1e-7, c.data());
    cpu::centered_clipping(rd.p(), n, d, 10.0, 2, static_cast<const double*>(nullptr), e.data());
    a.insert(a.end(), b.begin(), b.end());
    c.insert(c.end(), e.begin(), e.end());
    return std::make_pair(a, c);
  };
  auto one = run(1), two = run(2), three = run(3);
  CHECK(same_bits(one.first, two.first) && same_bits(one.second, two.second));
  CHECK(same_bits(one.first, three.first) && same_bits(one.second, three.second));
  omp_set_num_threads(saved);
#else
  std::printf("  (built without OpenMP)\n");
#endif
}

TEST_CASE("timing n=20 d=1e6 float32 (PYAGG_TIMING=1)") {
  if (!std::getenv("PYAGG_TIMING")) return;
  const std::size_t n = 20, d = 1000000;
  Rows<float> r = gaussian_rows<float>(n, d, 1);
  std::vector<float> out(d), st(d, 0.01f);
  auto time = [&](const char* name, auto fn) {
    fn();
    double best = 1e9;
    for (int k = 0; k < 5; ++k) {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("  %-28s %8.2f ms  %6.2f GB/s (one pass)\n", name, best * 1e3, double(n * d * 4) / best / 1e9);
  };
  time("geometric-median (defaults)", [&] { cpu::geometric_median(r.p(), n, d, 1e-6, 100, 1e-7, out.data()); });
  time("geometric-median max_iter=1", [&] { cpu::geometric_median(r.p(), n, d, 1e-6, 1, 1e-7, out.data()); });
  time("centered-clipping L=1", [&] { cpu::centered_clipping(r.p(), n, d, 10.0, 1, st.data(), out.data()); });
  time("centered-clipping L=3", [&] { cpu::centered_clipping(r.p(), n, d, 10.0, 3, st.data(), out.data()); });
}

CHECK_MAIN()
