// Pre-aggregators (engine/src/cpu/preagg.cpp): bucketing (splitmix64 +
// Fisher-Yates permutation checked against a hand-derived sequence), static
// clipping and ARC (hand-computed k and threshold), non-finite rows, tile
// tails, float32/float64, row pointers, determinism across thread counts.
// Set PYAGG_TIMING=1 to print timings at n=20, d=1e6 float32.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "check.h"
#include "testdata.h"
#include "cpu/cpu_backend.h"
#include "pyagg/rules.h"

using namespace pyagg;

namespace {

using testdata::Inf;
using testdata::NaN;
using testdata::Rows;

template <typename T>
bool same_bits(const T* a, const T* b, std::size_t k) {
  return std::memcmp(a, b, k * sizeof(T)) == 0;
}

std::string fmtv(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

template <typename T>
Rows<T> gaussian_rows(std::size_t n, std::size_t d, std::uint64_t seed) {
  Rows<T> r(n, d);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  for (auto& row : r.data)
    for (auto& v : row) v = static_cast<T>(g(rng));
  return r;
}

// Independent splitmix64 (Steele, Lea, Flood 2014; Vigna's reference code).
std::uint64_t splitmix64(std::uint64_t& state) {
  state += 0x9E3779B97F4A7C15ull;
  std::uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
std::vector<std::size_t> ref_perm(std::size_t n, std::uint64_t seed) {
  std::vector<std::size_t> p(n);
  std::iota(p.begin(), p.end(), std::size_t(0));
  for (std::size_t i = n; i-- > 1;) std::swap(p[i], p[splitmix64(seed) % (i + 1)]);
  return p;
}

}  // namespace

// ---------------------------------------------------------------- bucketing ---
TEST_CASE("splitmix64 stream and Fisher-Yates permutation, by hand") {
  // Published first outputs of splitmix64 seeded with 0.
  std::uint64_t s = 0;
  CHECK(splitmix64(s) == 0xE220A8397B1DCDAFull);
  CHECK(splitmix64(s) == 0x6E789E6AA1B965F4ull);
  CHECK(splitmix64(s) == 0x06C45D188009454Full);
  CHECK(splitmix64(s) == 0xF88BB8A8724C81ECull);
  // n = 5, seed 0: j = r1 % 5 = 0, r2 % 4 = 0, r3 % 3 = 1, r4 % 2 = 0
  //   i=4 j=0: [4,1,2,3,0]; i=3 j=0: [3,1,2,4,0]; i=2 j=1: [3,2,1,4,0]; i=1 j=0: [2,3,1,4,0]
  CHECK((ref_perm(5, 0) == std::vector<std::size_t>{2, 3, 1, 4, 0}));
  CHECK((ref_perm(7, 42) == std::vector<std::size_t>{2, 4, 6, 0, 3, 1, 5}));
}

TEST_CASE("bucketing: buckets of the permuted rows, last bucket smaller") {
  // row i = (2^i, 10 i): a bucket mean identifies its rows.
  const std::size_t n = 5, d = 2;
  std::vector<double> flat;
  for (std::size_t i = 0; i < n; ++i) flat.push_back(std::ldexp(1.0, int(i))), flat.push_back(10.0 * double(i));
  Rows<float> rf(n, d, flat);
  Rows<double> rd(n, d, flat);
  // seed 0, perm [2,3,1,4,0], s = 2: {2,3} {1,4} {0}
  std::vector<float> of(3 * d);
  cpu::bucketing(rf.p(), n, d, 2, 0, of.data());
  const float want_f[] = {6, 25, 9, 25, 1, 0};
  CHECK(same_bits(of.data(), want_f, 6));
  // s = 1: the permuted rows themselves; s >= n: one bucket (mean of all)
  std::vector<double> od(n * d);
  cpu::bucketing(rd.p(), n, d, 1, 0, od.data());
  const double want_1[] = {4, 20, 8, 30, 2, 10, 16, 40, 1, 0};
  CHECK(same_bits(od.data(), want_1, n * d));
  cpu::bucketing(rd.p(), n, d, 7, 0, od.data());
  CHECK(od[0] == (4.0 + 8 + 2 + 16 + 1) / 5 && od[1] == 100.0 / 5);
  // n = 7, seed 42, perm [2,4,6,0,3,1,5], s = 3: {2,4,6} {0,3,1} {5}
  Rows<double> r7(7, 1);
  for (std::size_t i = 0; i < 7; ++i) r7.data[i][0] = std::ldexp(1.0, int(i));
  std::vector<double> o7(3);
  cpu::bucketing(r7.p(), 7, 1, 3, 42, o7.data());
  CHECK_MSG(o7[0] == 84.0 / 3 && o7[1] == 11.0 / 3 && o7[2] == 32.0, fmtv(o7[0]) + " " + fmtv(o7[1]));
  // another seed gives another permutation
  cpu::bucketing(r7.p(), 7, 1, 3, 43, o7.data());
  CHECK(!(o7[0] == 84.0 / 3 && o7[1] == 11.0 / 3));
}

TEST_CASE("bucketing: random data vs reference, NaN propagates to its bucket only, tails") {
  for (std::size_t d : {1, 7, 33, 1000 + 13}) {
    for (std::size_t s : {1, 2, 3, 6}) {
      const std::size_t n = 11, nb = (n + s - 1) / s;
      const std::uint64_t seed = 0x1234ABCDull * (d + s);
      Rows<float> r = gaussian_rows<float>(n, d, d * 31 + s);
      r.data[4][d - 1] = float(NaN);
      std::vector<float> out(nb * d);
      cpu::bucketing(r.p(), n, d, s, seed, out.data());
      const auto p = ref_perm(n, seed);
      bool ok = true;
      for (std::size_t b = 0; b < nb; ++b)
        for (std::size_t j = 0; j < d; ++j) {
          double acc = 0;
          const std::size_t hi = std::min(n, (b + 1) * s);
          for (std::size_t t = b * s; t < hi; ++t) acc += r.data[p[t]][j];
          const float want = static_cast<float>(acc / double(hi - b * s));
          const float got = out[b * d + j];
          ok = ok && (std::memcmp(&want, &got, sizeof got) == 0 || (std::isnan(want) && std::isnan(got)));
        }
      CHECK_MSG(ok, "d=" + std::to_string(d) + " s=" + std::to_string(s));
      std::size_t nan_count = 0;
      for (float v : out) nan_count += std::isnan(v);
      CHECK(nan_count == 1);
    }
  }
}

// ----------------------------------------------------------------- clipping ---
TEST_CASE("static clipping: x * min(1, tau/||x||), non-finite rows copied") {
  // rows (3,4) norm 5, (0,0), (0.3,0.4) norm 0.5, (NaN, 1), (-6, 8) norm 10; tau = 1
  Rows<double> r(5, 2, {3, 4, 0, 0, 0.3, 0.4, NaN, 1, -6, 8});
  std::vector<double> o(5 * 2);
  cpu::clipping(r.p(), 5, 2, 0, 1.0, o.data());
  CHECK(o[0] == 3.0 * 0.2 && o[1] == 4.0 * 0.2);  // scale = tau/||x|| = 1/5 in double
  CHECK(o[2] == 0 && o[3] == 0);
  CHECK(o[4] == 0.3 && o[5] == 0.4);  // norm below tau: unchanged bits
  CHECK(std::isnan(o[6]) && o[7] == 1);
  CHECK(o[8] == -6.0 * 0.1 && o[9] == 8.0 * 0.1);
  // float32: the product in double, rounded once
  Rows<float> rf(1, 3, {1, 2, 2});  // norm 3
  std::vector<float> of(3);
  cpu::clipping(rf.p(), 1, 3, 0, 1.5, of.data());
  CHECK(of[0] == 0.5f && of[1] == 1.0f && of[2] == 1.0f);
}

TEST_CASE("ARC: k = floor(2f(n-f)/n), clip to the (k+1)-th largest norm") {
  // n = 5, f = 1: k = floor(8/5) = 1. Norms 10, 5, 1, 2, 3 -> C = 5: row 0 -> (3,4).
  Rows<double> r(5, 2, {6, 8, 3, 4, 0, 1, 0, 2, 0, 3});
  std::vector<double> o(10);
  cpu::clipping(r.p(), 5, 2, 1, 0.0, o.data());
  const double want[] = {3, 4, 3, 4, 0, 1, 0, 2, 0, 3};
  CHECK(same_bits(o.data(), want, 10));
  // n = 5, f = 2: k = floor(12/5) = 2. Non-finite row 0 has norm +inf (copied);
  // norms inf, 10, 5, 1, 2 -> C = 5: row 1 -> (3,4).
  Rows<double> r2(5, 2, {NaN, 0, 6, 8, 3, 4, 0, 1, 0, 2});
  cpu::clipping(r2.p(), 5, 2, 2, 0.0, o.data());
  CHECK(std::isnan(o[0]) && o[1] == 0 && o[2] == 3 && o[3] == 4 && o[4] == 3 && o[5] == 4);
  CHECK(o[6] == 0 && o[7] == 1 && o[8] == 0 && o[9] == 2);
  // n = 7, f = 2: k = floor(20/7) = 2. Norms 1..7 at rows 0..6 -> C = 5: rows 5, 6 scaled.
  Rows<double> r3(7, 1, {1, -2, 3, -4, 5, -6, 7});
  std::vector<double> o3(7);
  cpu::clipping(r3.p(), 7, 1, 2, 0.0, o3.data());
  const double want3[] = {1, -2, 3, -4, 5, -6.0 * (5.0 / 6.0), 7.0 * (5.0 / 7.0)};
  CHECK_MSG(same_bits(o3.data(), want3, 7), fmtv(o3[5]) + " " + fmtv(o3[6]));
  // ties: norms 5, 5, 5, 1 (n = 4, f = 1: k = 1) -> C = 5, nothing above it
  Rows<float> r4(4, 2, {3, 4, -4, 3, 0, 5, 1, 0});
  std::vector<float> o4(8);
  cpu::clipping(r4.p(), 4, 2, 1, 0.0, o4.data());
  const float want4[] = {3, 4, -4, 3, 0, 5, 1, 0};
  CHECK(same_bits(o4.data(), want4, 8));
  // (k+1)-th norm not finite (2 non-finite rows, k = 1): everything copied
  Rows<float> r5(4, 2, {Inf, 0, 30, 40, NaN, NaN, 3, 4});
  cpu::clipping(r5.p(), 4, 2, 1, 0.0, o4.data());
  CHECK(std::isinf(o4[0]) && o4[2] == 30 && o4[3] == 40 && std::isnan(o4[4]) && o4[6] == 3);
  // f = 0: k = 0, everything copied
  cpu::clipping(r.p(), 5, 2, 0, 0.0, o.data());
  CHECK(same_bits(o.data(), r.data[0].data(), 2) && o[0] == 6);
  // n = 1, f = 0
  Rows<double> r1(1, 1, {-9});
  double o1;
  cpu::clipping(r1.p(), 1, 1, 0, 0.0, &o1);
  CHECK(o1 == -9);
}

TEST_CASE("clipping: random data, tails, the clipped norm is tau") {
  for (std::size_t d : std::vector<std::size_t>{1, 7, 33, 1013, 3 * cpu::kReduceBlock + 1}) {
    const std::size_t n = 6;
    Rows<float> r = gaussian_rows<float>(n, d, d);
    std::vector<float> o(n * d);
    const double tau = 0.8 * std::sqrt(double(d));
    cpu::clipping(r.p(), n, d, 1, tau, o.data());
    for (std::size_t i = 0; i < n; ++i) {
      double nx = 0, no = 0;
      for (std::size_t j = 0; j < d; ++j) nx += double(r.data[i][j]) * r.data[i][j];
      for (std::size_t j = 0; j < d; ++j) no += double(o[i * d + j]) * o[i * d + j];
      nx = std::sqrt(nx), no = std::sqrt(no);
      if (nx <= tau)
        CHECK(same_bits(o.data() + i * d, r.data[i].data(), d));
      else
        CHECK_MSG(std::fabs(no - tau) <= 1e-5 * tau, "d=" + std::to_string(d) + " " + fmtv(no) + " vs " + fmtv(tau));
    }
  }
}

// ------------------------------------------------------------- the API ---
TEST_CASE("through the API: contiguous block and row pointers agree") {
  const std::size_t n = 9, d = 1000 + 13;
  Rows<double> r = gaussian_rows<double>(n, d, 8);
  std::vector<double> block(n * d);
  for (std::size_t i = 0; i < n; ++i) std::copy(r.data[i].begin(), r.data[i].end(), block.begin() + i * d);
  std::vector<const void*> ptrs(r.ptr.begin(), r.ptr.end());
  struct P {
    const char* name;
    std::vector<NamedParam> params;
  } pres[] = {{"bucketing", {{"s", 2}, {"seed", 7}}}, {"clipping", {{"tau", 3.0}}}, {"clipping", {}}};
  for (const auto& pr : pres) {
    PreConfig c;
    Status st = make_pre(pr.name, 2, pr.params, &c);
    CHECK_MSG(st.ok(), st.message());
    GradView a, b;
    a.data = block.data();
    b.rows = ptrs.data();
    a.n = b.n = n;
    a.d = b.d = d;
    a.dtype = b.dtype = DType::kFloat64;
    const std::size_t rows_out = pre_output_rows(c, n);
    std::vector<double> oa(rows_out * d), ob(rows_out * d);
    CHECK(preaggregate(c, a, oa.data()).ok());
    CHECK(preaggregate(c, b, ob.data()).ok());
    CHECK_MSG(same_bits(oa.data(), ob.data(), oa.size()), pr.name);
  }
}

TEST_CASE("same bits with 1 and 2 threads") {
#ifdef _OPENMP
  const std::size_t n = 10, d = 100003;
  Rows<float> r = gaussian_rows<float>(n, d, 2);
  const int saved = omp_get_max_threads();
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> all, o(n * d);
    cpu::bucketing(r.p(), n, d, 3, 99, o.data());
    all.insert(all.end(), o.begin(), o.begin() + 4 * d);
    cpu::clipping(r.p(), n, d, 3, 250.0, o.data());
    all.insert(all.end(), o.begin(), o.end());
    cpu::clipping(r.p(), n, d, 3, 0.0, o.data());
    all.insert(all.end(), o.begin(), o.end());
    return all;
  };
  // 1-3 threads: clipping parallel over rows; 8 threads (n < 2*threads): over
  // the blocks of each row. Same bits.
  const auto a = run(1), b = run(2), c = run(3), e = run(8);
  CHECK(same_bits(a.data(), b.data(), a.size()) && same_bits(a.data(), c.data(), a.size()));
  CHECK(same_bits(a.data(), e.data(), a.size()));
  omp_set_num_threads(saved);
#else
  std::printf("  (built without OpenMP)\n");
#endif
}

TEST_CASE("timing n=20 d=1e6 float32 (PYAGG_TIMING=1)") {
  if (!std::getenv("PYAGG_TIMING")) return;
  const std::size_t n = 20, d = 1000000;
  Rows<float> r = gaussian_rows<float>(n, d, 1);
  std::vector<float> out(n * d);
  auto time = [&](const char* name, auto fn) {
    fn();
    double best = 1e9;
    for (int k = 0; k < 5; ++k) {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("  %-22s %8.2f ms  %6.2f GB/s\n", name, best * 1e3, double(n * d * 4) / best / 1e9);
  };
  time("bucketing s=2", [&] { cpu::bucketing(r.p(), n, d, 2, 42, out.data()); });
  time("clipping tau=10", [&] { cpu::clipping(r.p(), n, d, 4, 10.0, out.data()); });
  time("clipping ARC f=4", [&] { cpu::clipping(r.p(), n, d, 4, 0.0, out.data()); });
}

CHECK_MAIN()
