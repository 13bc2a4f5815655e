// The host logic of dnc, clipped-clustering, smea, caf and zeroing
// (engine/src/common/select_next.h) on hand-made inputs: the PRNG streams of
// rules_next.md, POWER (zero matrix, orthogonal start, clear gap), the Gram
// matrix from distances against the Gram matrix of the centered data, the
// Jacobi eigenvalue, SMEA's subset ranking (unrank / next), clustering and
// zeroing on tiny cases; and the public API for the five rules (thread-count
// determinism of one case).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "check.h"
#include "cpu/cpu_backend.h"
#include "common/select_next.h"
#include "pyagg/rules.h"

using namespace pyagg;
using namespace pyagg::selection;

namespace {

std::vector<double> sqdist(const std::vector<double>& X, std::size_t n, std::size_t d) {
  std::vector<double> D(n * n);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::size_t k = 0; k < d; ++k) s += (X[i * d + k] - X[j * d + k]) * (X[i * d + k] - X[j * d + k]);
      D[i * n + j] = s;
    }
  return D;
}

}  // namespace

TEST_CASE("PRNG: splitmix64 vector, uniform doubles, start vector, Floyd subsets") {
  Stream s{0};
  CHECK(s.next() == 0xE220A8397B1DCDAFull);
  CHECK(s.next() == 0x6E789E6AA1B965F4ull);
  Stream u{0};
  const double u0 = u.uniform();
  CHECK(u0 == double(0xE220A8397B1DCDAFull >> 11) * 0x1.0p-53);
  Stream v{0};
  const auto sv = start_vector(v, 3);
  CHECK(sv[0] == 2.0 * u0 - 1.0);
  // Floyd: b draws, a b-subset, sorted; b = d - 1 with d = 2: one draw.
  for (std::uint64_t seed = 0; seed < 50; ++seed) {
    Stream r{seed};
    const auto S = floyd_subset(r, 100, 10);
    CHECK(S.size() == 10);
    for (std::size_t k = 1; k < S.size(); ++k) CHECK(S[k - 1] < S[k]);
    CHECK(S.back() < 100);
    Stream r2{seed};
    for (int k = 0; k < 10; ++k) r2.next();
    CHECK(r.state == r2.state);  // exactly b draws
  }
  // The bitmap and the hash set remember the taken values: the same subset
  // and the same draws, on either side of floyd_subset's choice, at word
  // edges (d = 63, 64, 65, 128) and at b = 1 and b = d - 1.
  const std::size_t cases[][2] = {{2, 1},      {63, 62},    {64, 1},       {65, 64},    {128, 100},
                                  {1000, 10},  {4097, 2048}, {100000, 3},   {100000, 1000}, {3200000, 1000},
                                  {5000000, 100}};
  for (const auto& dc : cases)
    for (std::uint64_t seed : {std::uint64_t(0), std::uint64_t(7), ~std::uint64_t(0)}) {
      const std::size_t d = dc[0], b = dc[1];
      Stream a{seed}, h{seed}, c{seed};
      const auto A = floyd_subset_bitmap(a, d, b), H = floyd_subset_hashed(h, d, b), C = floyd_subset(c, d, b);
      const std::string tag = "d " + std::to_string(d) + " b " + std::to_string(b);
      CHECK_MSG(A == H, tag + ": the bitmap's subset is the hash set's");
      CHECK_MSG(C == H, tag + ": floyd_subset's subset");
      CHECK_MSG(a.state == h.state && c.state == h.state, tag + ": the same draws");
      CHECK_MSG(A.size() == b && (b == 0 || A.back() < d), tag + ": b values below d");
      for (std::size_t k = 1; k < A.size(); ++k) CHECK_MSG(A[k - 1] < A[k], tag + ": sorted, distinct");
    }
}

TEST_CASE("POWER: zero matrix, orthogonal start, clear gap") {
  std::vector<double> Z(9, 0.0);
  Eigen e = power_method(Z, 3, {1, 2, 3}, 100);
  CHECK(!e.direction && e.lambda == 0.0);
  // diag(1, 4, 4) with start e_0 + ... : M u != 0, converges to lambda 4.
  std::vector<double> M = {1, 0, 0, 0, 4, 0, 0, 0, 2};
  e = power_method(M, 3, {0.5, 0.1, 0.7}, 100);
  CHECK_NEAR(e.lambda, 4.0, 1e-12);
  // Start orthogonal to the range: M = diag(0, 3, 3), s = e_0 -> u = e_1
  // (lowest index of the largest diagonal entry).
  std::vector<double> P = {0, 0, 0, 0, 3, 0, 0, 0, 3};
  e = power_method(P, 3, {1, 0, 0}, 5);
  CHECK(e.direction && e.u[1] == 1.0 && e.u[2] == 0.0);
  CHECK_NEAR(e.lambda, 3.0, 0.0);
}

TEST_CASE("Gram matrix from distances = Gram matrix of the centered rows") {
  const std::size_t n = 7, d = 13;
  std::mt19937_64 rng(3);
  std::normal_distribution<double> N(0, 1);
  std::vector<double> X(n * d);
  for (auto& x : X) x = 1e3 + N(rng);  // large, nearly equal rows
  const auto D = sqdist(X, n, d);
  const std::vector<std::size_t> R = {0, 2, 3, 6};
  const auto K = centered_gram(D.data(), n, R);
  std::vector<double> mu(d, 0.0);
  for (std::size_t i : R)
    for (std::size_t k = 0; k < d; ++k) mu[k] += X[i * d + k] / double(R.size());
  for (std::size_t a = 0; a < R.size(); ++a)
    for (std::size_t b = 0; b < R.size(); ++b) {
      double g = 0;
      for (std::size_t k = 0; k < d; ++k) g += (X[R[a] * d + k] - mu[k]) * (X[R[b] * d + k] - mu[k]);
      CHECK_NEAR(K[a * R.size() + b], g, 1e-9 * 13);
      CHECK(K[a * R.size() + b] == K[b * R.size() + a]);  // symmetric bit for bit
    }
}

TEST_CASE("Jacobi: largest eigenvalue") {
  // [[2,1,0],[1,2,1],[0,1,2]]: eigenvalues 2 - sqrt2, 2, 2 + sqrt2.
  std::vector<double> A = {2, 1, 0, 1, 2, 1, 0, 1, 2};
  CHECK_NEAR(jacobi_max_eig(A, 3), 2 + std::sqrt(2.0), 1e-14);
  std::vector<double> B = {-1, 0, 0, -3};
  CHECK_NEAR(jacobi_max_eig(B, 2), -1.0, 0.0);
  std::vector<double> A2 = {2, 1, 0, 1, 2, 1, 0, 1, 2};
  CHECK_NEAR(tridiag_max_eig(A2, 3), 2 + std::sqrt(2.0), 1e-14);
  // SMEA's eigenvalue (Householder + bisection) against Jacobi on random PSD
  // matrices, with a clear and a near-degenerate top, relative 1e-12.
  std::mt19937_64 rng(9);
  std::normal_distribution<double> N(0, 1);
  for (std::size_t m : {2, 3, 5, 16, 24}) {
    for (int rep = 0; rep < 20; ++rep) {
      std::vector<double> Y(m * 7), M(m * m);
      for (auto& y : Y) y = N(rng) * (rep % 2 ? 1e6 : 1e-3);
      if (rep % 3 == 0)
        for (std::size_t i = 0; i < m; ++i) Y[i * 7] = Y[i * 7 + 1];  // two equal columns
      for (std::size_t a = 0; a < m; ++a)
        for (std::size_t b = 0; b < m; ++b) {
          double s = 0;
          for (int k = 0; k < 7; ++k) s += Y[a * 7 + k] * Y[b * 7 + k];
          M[a * m + b] = s;
        }
      std::vector<double> M2 = M;
      const double j = jacobi_max_eig(M, m), t = tridiag_max_eig(M2, m);
      CHECK_MSG(std::fabs(j - t) <= 1e-12 * std::fabs(j), std::to_string(j) + " vs " + std::to_string(t));
    }
  }
}

TEST_CASE("SMEA subsets: unrank and next follow lexicographic order") {
  const std::size_t n = 9, s = 4;
  std::vector<std::size_t> c(s), u(s);
  unrank_combination(0, n, s, c.data());
  std::uint64_t rank = 0;
  do {
    unrank_combination(rank, n, s, u.data());
    CHECK(u == c);
    ++rank;
  } while (next_combination(c.data(), n, s));
  CHECK(rank == binom_u64(n, s));
  CHECK(binom_u64(30, 7) == 2035800ull);
}


// smea's branch and bound (smea_skip, a first candidate) must pick the subset
// the full lexicographic scan picks: the first subset of smallest
// smea_lambda, over usable subsets. Cases: Gaussian rows, rows with far
// (Byzantine) rows that every subset but one holds, duplicated rows (exact
// ties between subsets), all rows equal (every lambda 0), non-finite rows,
// fewer usable rows than m; n = 5..14, every f allowed.
TEST_CASE("smea: the pruned scan picks the full scan's subset") {
  std::mt19937_64 rng(41);
  std::normal_distribution<double> N;
  int cases = 0, pruned_cases = 0;
  for (int kind = 0; kind < 6; ++kind)
    for (std::size_t n = 5; n <= 14; ++n)
      for (std::size_t f = 1; 2 * f + 1 <= n; ++f) {
        const std::size_t d = 7, m = n - f;
        std::vector<double> X(n * d);
        for (double& v : X) v = N(rng);
        std::vector<RowStat> st(n);
        if (kind == 1)  // f far rows at random places
          for (std::size_t k = 0; k < f; ++k) {
            const std::size_t i = rng() % n;
            for (std::size_t c = 0; c < d; ++c) X[i * d + c] = 1e3 * N(rng);
          }
        if (kind == 2)  // duplicates: rows 2i+1 = rows 2i
          for (std::size_t i = 0; i + 1 < n; i += 2)
            for (std::size_t c = 0; c < d; ++c) X[(i + 1) * d + c] = X[i * d + c];
        if (kind == 3)
          for (std::size_t i = 1; i < n; ++i)
            for (std::size_t c = 0; c < d; ++c) X[i * d + c] = X[c];
        if (kind == 4) st[rng() % n].finite = false;
        if (kind == 5)
          for (std::size_t k = 0; k <= f; ++k) st[k].finite = false;
        std::vector<double> D = sqdist(X, n, d);
        RuleConfig r;
        r.rule = RuleId::kSmea;
        r.f = f;
        const Combo got = smea(r, D.data(), n, st);
        // The full scan, written out here: first minimum in lexicographic order.
        const std::vector<std::size_t> R = usable_rows(st);
        std::vector<std::size_t> pos(n, n);
        for (std::size_t a = 0; a < R.size(); ++a) pos[R[a]] = a;
        const std::vector<double> K = R.empty() ? std::vector<double>() : centered_gram(D.data(), n, R);
        std::vector<std::size_t> c(m), want;
        std::vector<double> B, rho;
        double best = std::numeric_limits<double>::infinity();
        unrank_combination(0, n, m, c.data());
        std::size_t evaluated = 0;
        do {
          bool ok = true;
          for (std::size_t t = 0; t < m; ++t) ok = ok && pos[c[t]] < n;
          const double lam = ok ? smea_lambda(K, R.size(), pos, c.data(), m, B, rho)
                                : std::numeric_limits<double>::infinity();
          evaluated += ok;
          if (want.empty() || lam < best) {
            best = lam;
            want = c;
          }
        } while (next_combination(c.data(), n, m));
        CHECK(got.idx == want);
        ++cases;
        // How many subsets the bound skips against the final minimum.
        std::size_t skippable = 0;
        unrank_combination(0, n, m, c.data());
        do {
          bool ok = true;
          for (std::size_t t = 0; t < m; ++t) ok = ok && pos[c[t]] < n;
          if (ok && smea_skip(smea_matrix(K, R.size(), pos, c.data(), m, B, rho), m, best)) ++skippable;
        } while (next_combination(c.data(), n, m));
        pruned_cases += kind == 1 && skippable * 2 > evaluated;
      }
  CHECK(cases == 6 * 40);
  CHECK(pruned_cases > 30);  // far rows: most subsets skipped (the bound does work)
}
TEST_CASE("clipped clustering and zeroing on tiny inputs") {
  // Rows 0, 1, 3 along +x, rows 2, 4 along -x: the +x cluster (3 rows) wins.
  const std::size_t n = 5, d = 2;
  std::vector<double> X = {1, 0.1, 2, 0, -1, 0, 1, -0.1, -3, 0.2};
  const auto D = sqdist(X, n, d);
  std::vector<RowStat> st(n);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t k = 0; k < d; ++k) {
      st[i].sumsq += X[i * d + k] * X[i * d + k];
      st[i].l1 += std::fabs(X[i * d + k]);
      st[i].linf = std::max(st[i].linf, std::fabs(X[i * d + k]));
    }
  }
  RuleConfig r;
  CHECK(make_rule("clipped-clustering", 2, {}, &r).ok());
  Combo c = clipped_clustering(r, D.data(), n, st);
  CHECK((c.idx == std::vector<std::size_t>{0, 1, 3}) && c.den == 3.0);
  // tau = median norm = sqrt(1.01): row 1 (norm 2) is scaled by tau / 2.
  CHECK_NEAR(c.a[1], std::sqrt(1.01) / 2.0, 1e-15);
  CHECK(c.a[0] == 1.0 && c.a[2] == 1.0);
  // The history: a second call sees the first call's norms too.
  CHECK(r.history && r.history->norms.size() == n);
  RuleConfig z;
  CHECK(make_rule("zeroing", 0, {{"tau", 1.0}}, &z).ok());
  c = zeroing(z, st);
  CHECK((c.idx == std::vector<std::size_t>{0, 2, 3}) && c.den == 5.0);
  st[3].finite = false;
  c = zeroing(z, st);
  CHECK((c.idx == std::vector<std::size_t>{0, 2}));
}

TEST_CASE("the five rules: same bits with 1 and 3 threads") {
  const std::size_t n = 13, d = 9001;
  std::mt19937_64 rng(5);
  std::normal_distribution<double> N(0, 1);
  std::vector<float> X(n * d);
  for (auto& x : X) x = float(N(rng));
  X[4 * d + 17] = std::numeric_limits<float>::quiet_NaN();
  GradView g;
  g.data = X.data();
  g.n = n;
  g.d = d;
  g.dtype = DType::kFloat32;
  const std::vector<std::pair<const char*, std::vector<NamedParam>>> rules = {
      {"dnc", {{"b", 1000}}}, {"dnc", {}}, {"clipped-clustering", {}}, {"smea", {}}, {"caf", {}},
      {"zeroing", {{"tau", 3.0}}}};
  for (const auto& rp : rules) {
    std::vector<float> a(d), b(d);
    RuleConfig cfg;
    CHECK(make_rule(rp.first, 2, rp.second, &cfg).ok());
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    CHECK(aggregate(cfg, g, a.data()).ok());
    CHECK(make_rule(rp.first, 2, rp.second, &cfg).ok());  // a fresh norm history
#ifdef _OPENMP
    omp_set_num_threads(3);
#endif
    CHECK(aggregate(cfg, g, b.data()).ok());
    CHECK_MSG(std::memcmp(a.data(), b.data(), d * sizeof(float)) == 0, rp.first);
    for (float v : a) CHECK(std::isfinite(v));
  }
}

// dnc with b < d: the samples' values copied during the row statistics pass
// (cpu::dnc_sampled, ahead) against one gather from G per iteration: the same
// bits, across block edges, ragged last blocks, non-finite rows, b = 1 and
// b = d - 1, float and double; and rule_next (which picks) gives them too.
template <typename T>
void check_dnc_ahead(std::size_t n, std::size_t d, std::size_t f, std::int64_t b, std::int64_t niters,
                     std::uint64_t seed, bool bad_row) {
  std::mt19937_64 rng(seed + 17);
  std::normal_distribution<double> N(0, 1);
  std::vector<T> X(n * d);
  for (auto& x : X) x = T(N(rng));
  for (std::size_t c = 0; c < d; c += 3) X[2 * d + c] = T(X[2 * d + c] * 40);  // a far row
  if (bad_row) X[(n - 1) * d + d / 2] = std::numeric_limits<T>::infinity();
  std::vector<const T*> rows(n);
  for (std::size_t i = 0; i < n; ++i) rows[i] = X.data() + i * d;
  RuleConfig cfg;
  CHECK(make_rule("dnc", f, {{"b", double(b)}, {"niters", double(niters)}, {"seed", double(seed)}}, &cfg).ok());
  std::vector<T> a(d), g(d), r(d);
  cpu::dnc_sampled<T>(cfg, rows.data(), n, d, true, a.data());
  cpu::dnc_sampled<T>(cfg, rows.data(), n, d, false, g.data());
  cpu::rule_next<T>(cfg, rows.data(), n, d, r.data());
  const std::string tag = "n " + std::to_string(n) + " d " + std::to_string(d) + " b " + std::to_string(b) +
                          " niters " + std::to_string(niters) + (sizeof(T) == 4 ? " float" : " double");
  CHECK_MSG(std::memcmp(a.data(), g.data(), d * sizeof(T)) == 0, tag + ": copied ahead = gathered");
  CHECK_MSG(std::memcmp(r.data(), g.data(), d * sizeof(T)) == 0, tag + ": rule_next = gathered");
  for (T v : a) CHECK_MSG(std::isfinite(v), tag + ": finite");
}

TEST_CASE("dnc: samples copied during the statistics pass = gathered per iteration") {
  check_dnc_ahead<float>(9, 3 * 4096 + 77, 2, 2001, 5, 0, true);
  check_dnc_ahead<float>(13, 100000, 3, 10000, 5, 3, false);
  check_dnc_ahead<float>(6, 10000, 1, 1, 7, 5, false);
  check_dnc_ahead<double>(7, 4096, 2, 100, 3, 1, true);
  check_dnc_ahead<double>(5, 70, 1, 69, 2, 2, false);
  check_dnc_ahead<double>(11, 2 * 4096, 3, 4095, 4, ~std::uint64_t(0) >> 11, true);
  // Gaussian rows but one: which rows each iteration drops turns on small
  // differences of the projections, so a wrong copied value shows.
  for (std::uint64_t seed = 10; seed < 18; ++seed) {
    check_dnc_ahead<float>(11, 3 * 4096 + 77, 3, 1500, 5, seed, seed % 2 == 0);
    check_dnc_ahead<double>(12, 2 * 4096 + 5, 3, 3000, 3, seed, seed % 3 == 0);
  }
}

int main() { return check::run_all(); }
