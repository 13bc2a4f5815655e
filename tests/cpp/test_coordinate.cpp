// Coordinate-wise rules (engine/src/cpu/coordinate.cpp) and the sorting
// networks they use (engine/src/cpu/sortnet.h): hand-computed cases, a scalar
// reference on random data with ties / NaN / +-inf, tile tails, float32 and
// float64, row pointers vs contiguous input, determinism across thread counts.
// Set PYAGG_TIMING=1 to also print timings at n=20, d=1e6 float32.
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
#include <type_traits>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "check.h"
#include "testdata.h"
#include "cpu/cpu_backend.h"
#include "cpu/sortnet.h"
#include "pyagg/rules.h"

using namespace pyagg;
namespace sortnet = pyagg::cpu::sortnet;

namespace {

using testdata::Inf;
using testdata::NaN;
using testdata::Rows;

template <typename T>
bool same_bits(T a, T b) {
  if (std::isnan(a) && std::isnan(b)) return true;
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!same_bits(a[i], b[i])) return false;
  return true;
}

std::string fmtv(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

// ------------------------------------------------------- scalar references ---
bool fin(double v) { return std::isfinite(v); }
double mid_ref(double a, double b) {
  double s = a + b;
  return std::isfinite(s) ? s / 2 : a / 2 + b / 2;
}
// Sorted finite values of column j.
template <typename T>
std::vector<T> finite_col(const Rows<T>& r, std::size_t j) {
  std::vector<T> v;
  for (std::size_t i = 0; i < r.n(); ++i)
    if (fin(r.data[i][j])) v.push_back(r.data[i][j]);
  std::sort(v.begin(), v.end());
  return v;
}
template <typename T>
double median_ref_sorted(const std::vector<T>& s) {
  const std::size_t k = s.size();
  if (k == 0) return 0.0;
  if (k % 2) return s[k / 2];
  return mid_ref(s[k / 2 - 1], s[k / 2]);
}
template <typename T>
T ref_median(const Rows<T>& r, std::size_t j) {
  return static_cast<T>(median_ref_sorted(finite_col(r, j)));
}
template <typename T>
T ref_average(const Rows<T>& r, std::size_t j) {
  double s = 0;
  for (std::size_t i = 0; i < r.n(); ++i) s += r.data[i][j];
  return static_cast<T>(s / double(r.n()));
}
template <typename T>
T ref_average_nan(const Rows<T>& r, std::size_t j) {
  double s = 0, k = 0;
  for (std::size_t i = 0; i < r.n(); ++i)
    if (fin(r.data[i][j])) s += r.data[i][j], k += 1;
  return k > 0 ? static_cast<T>(s / k) : T(0);
}
// Sorted-order sum of the kept values (bit-identical to the engine when the
// sums are exact, e.g. small integers; otherwise compare with a tolerance).
template <typename T>
T ref_trimmed(const Rows<T>& r, std::size_t j, std::size_t f) {
  std::vector<double> v;
  for (std::size_t i = 0; i < r.n(); ++i) {
    double x = r.data[i][j];
    v.push_back(std::isnan(x) ? Inf : x);
  }
  std::sort(v.begin(), v.end());
  double s = 0;
  for (std::size_t p = f; p < r.n() - f; ++p) s += v[p];
  return static_cast<T>(s / double(r.n() - 2 * f));
}
// The spec's two-pointer expansion.
template <typename T>
T ref_avgmed(const Rows<T>& r, std::size_t j, std::size_t beta) {
  std::vector<T> s = finite_col(r, j);
  const std::size_t k = s.size();
  if (k == 0) return T(0);
  const double m = median_ref_sorted(s);
  const std::size_t b = std::min(beta, k);
  std::size_t l = k / 2, rr = k / 2;
  while (rr - l < b) {
    if (l > 0 && (rr >= k || (m - double(s[l - 1])) <= (double(s[rr]) - m)))
      --l;
    else
      ++rr;
  }
  double sum = 0;
  for (std::size_t p = l; p < rr; ++p) sum += s[p];
  return static_cast<T>(sum / double(b));
}

// ------------------------------------------------------------- 0-1 checks ---
// All 2^n 0-1 inputs, 64 at a time (bit t of a word = input number base+t).
// Returns false if, after `net`, some wire with want == kExact differs from the
// sorted input, or the number of ones on the kBag wires differs.
bool check_network_01(std::size_t n, const std::vector<sortnet::Comparator>& net,
                      const std::vector<unsigned char>& want) {
  const std::uint64_t total = std::uint64_t(1) << n;
  std::vector<std::uint64_t> w(n);
  for (std::uint64_t base = 0; base < total; base += 64) {
    for (std::size_t i = 0; i < n; ++i) {
      std::uint64_t word = 0;
      for (std::uint64_t t = 0; t < 64 && base + t < total; ++t)
        if (((base + t) >> i) & 1) word |= std::uint64_t(1) << t;
      w[i] = word;
    }
    for (auto c : net) {
      const std::uint64_t a = w[c.a], b = w[c.b];
      w[c.a] = a & b;
      w[c.b] = a | b;
    }
    for (std::uint64_t t = 0; t < 64 && base + t < total; ++t) {
      const std::size_t ones = std::size_t(__builtin_popcountll(base + t));
      std::size_t bag_ones = 0, bag_expect = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const bool got = (w[i] >> t) & 1;
        const bool expect = i >= n - ones;  // sorted ascending: zeros first
        if (want[i] == sortnet::kExact && got != expect) return false;
        if (want[i] == sortnet::kBag) bag_ones += got, bag_expect += expect;
      }
      if (bag_ones != bag_expect) return false;
    }
  }
  return true;
}

std::vector<unsigned char> wants(std::size_t n, std::size_t lo, std::size_t hi, unsigned char w) {
  std::vector<unsigned char> v(n, sortnet::kDead);
  for (std::size_t i = lo; i < hi; ++i) v[i] = w;
  return v;
}

}  // namespace

// ---------------------------------------------------------------- networks ---
TEST_CASE("batcher network sorts every 0-1 input, n = 0..20") {
  for (std::size_t n = 0; n <= 20; ++n) {
    auto net = sortnet::batcher_network(n);
    for (auto c : net) CHECK(c.a < c.b && c.b < n);
    CHECK_MSG(check_network_01(n, net, wants(n, 0, n, sortnet::kExact)), "n=" + std::to_string(n));
  }
  // Known sizes of Batcher's odd-even merge sort.
  CHECK(sortnet::batcher_network(2).size() == 1);
  CHECK(sortnet::batcher_network(4).size() == 5);
  CHECK(sortnet::batcher_network(8).size() == 19);
  CHECK(sortnet::batcher_network(16).size() == 63);
  CHECK(sortnet::batcher_network(32).size() == 191);
}

TEST_CASE("pruned networks deliver what is asked, n = 1..18") {
  for (std::size_t n = 1; n <= 18; ++n) {
    const auto full = sortnet::batcher_network(n);
    // median (all finite), lower half (median with absent values)
    auto w_mid = wants(n, (n - 1) / 2, n / 2 + 1, sortnet::kExact);
    auto w_low = wants(n, 0, n / 2 + 1, sortnet::kExact);
    auto p_mid = sortnet::prune_network(full, w_mid);
    auto p_low = sortnet::prune_network(full, w_low);
    CHECK_MSG(check_network_01(n, p_mid, w_mid), "mid n=" + std::to_string(n));
    CHECK_MSG(check_network_01(n, p_low, w_low), "low n=" + std::to_string(n));
    CHECK(p_mid.size() <= p_low.size() && p_low.size() <= full.size());
    for (std::size_t f = 0; 2 * f < n; ++f) {
      auto w_bag = wants(n, f, n - f, sortnet::kBag);
      auto p_bag = sortnet::prune_network(full, w_bag);
      CHECK_MSG(check_network_01(n, p_bag, w_bag), "bag n=" + std::to_string(n) + " f=" + std::to_string(f));
      if (f == 0) CHECK(p_bag.empty());
    }
  }
  // Pruning must actually prune: n=20, median wires 9..10 and trimmed f=4.
  const auto full20 = sortnet::batcher_network(20);
  const auto mid20 = sortnet::prune_network(full20, wants(20, 9, 11, sortnet::kExact));
  const auto bag20 = sortnet::prune_network(full20, wants(20, 4, 16, sortnet::kBag));
  std::printf("  n=20 comparators: full %zu, median %zu, trimmed(f=4) %zu\n", full20.size(), mid20.size(),
              bag20.size());
  CHECK(mid20.size() < full20.size());
  CHECK(bag20.size() < full20.size());
  // A wrong want must be caught by the checker (the test can fail).
  CHECK(!check_network_01(4, {{0, 1}}, wants(4, 0, 4, sortnet::kExact)));
}

namespace {
// The compile-time networks are the run-time ones, comparator for comparator.
template <std::size_t N>
bool static_matches_runtime() {
  auto same = [](const sortnet::FixedNet<N>& f, const std::vector<sortnet::Comparator>& r) {
    if (f.size != r.size()) return false;
    for (std::size_t c = 0; c < r.size(); ++c)
      if (f.c[c].a != r[c].a || f.c[c].b != r[c].b) return false;
    return true;
  };
  const auto full = sortnet::batcher_network(N);
  return same(sortnet::FixedNetOf<N, sortnet::kSortAll>::value, full) &&
         same(sortnet::FixedNetOf<N, sortnet::kMiddle>::value,
              sortnet::prune_network(full, wants(N, (N - 1) / 2, N / 2 + 1, sortnet::kExact))) &&
         same(sortnet::FixedNetOf<N, sortnet::kLowerHalf>::value,
              sortnet::prune_network(full, wants(N, 0, N / 2 + 1, sortnet::kExact)));
}
template <std::size_t... N>
bool all_static_match(std::index_sequence<N...>) {
  bool ok = true;
  ((ok = ok && static_matches_runtime<N + 1>()), ...);
  return ok;
}
}  // namespace

TEST_CASE("compile-time networks equal the run-time ones, n = 1..32") {
  CHECK(all_static_match(std::make_index_sequence<sortnet::kMaxStaticN>{}));
}

TEST_CASE("full networks sort random inputs, n = 21..70") {
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<int> v(-5, 5);
  for (std::size_t n = 21; n <= 70; ++n) {
    const auto net = sortnet::batcher_network(n);
    for (int rep = 0; rep < 200; ++rep) {
      std::vector<int> x(n);
      for (auto& e : x) e = v(rng);
      std::vector<int> s = x;
      std::sort(s.begin(), s.end());
      for (auto c : net)
        if (x[c.b] < x[c.a]) std::swap(x[c.a], x[c.b]);
      CHECK_MSG(x == s, "n=" + std::to_string(n));
      if (x != s) return;
    }
  }
}

TEST_CASE("apply on a tile sorts each lane independently") {
  constexpr std::size_t W = 16;  // a whole number of vectors for any SIMD width <= 64 bytes
  const std::size_t n = 5;
  alignas(64) float buf[n * W];
  const float cols[W][n] = {{5, 4, 3, 2, 1},    {1, 2, 3, 4, 5},   {2, 2, 1, 1, 3}, {0, -1, 7, -1, 0},
                            {9, 8, 9, 8, 9},    {3, 1, 4, 1, 5},   {1e30f, -1e30f, 0, 1, -1}, {6, 6, 6, 6, 6},
                            {-1, -2, -3, -4, -5}, {0, 0, 0, 0, 1}, {1, 0, 0, 0, 0}, {2, 1, 2, 1, 2},
                            {7, 3, 5, 1, 9},    {-0.5f, 0.5f, -0.25f, 0.25f, 0}, {4, 4, 3, 3, 5}, {8, 6, 7, 5, 3}};
  for (std::size_t l = 0; l < W; ++l)
    for (std::size_t i = 0; i < n; ++i) buf[i * W + l] = cols[l][i];
  auto off = sortnet::to_offsets(sortnet::batcher_network(n), W);
  sortnet::apply<float, W>(buf, off.data(), off.size());
  for (std::size_t l = 0; l < W; ++l) {
    std::vector<float> e(cols[l], cols[l] + n);
    std::sort(e.begin(), e.end());
    for (std::size_t i = 0; i < n; ++i) CHECK(buf[i * W + l] == e[i]);
  }
}

// ---------------------------------------------------------- hand-computed ---
TEST_CASE("average: row order double sum / n, NaN and inf propagate") {
  // columns: (1,3,5) (2,4,7) (NaN,1,1) (inf,-1,0) (1e8, 1, -1e8)
  Rows<float> r(3, 5, {1, 2, NaN, Inf, 1e8, 3, 4, 1, -1, 1, 5, 7, 1, 0, -1e8});
  std::vector<float> out(5);
  cpu::average(r.p(), 3, 5, out.data());
  CHECK(out[0] == 3.0f);
  CHECK(out[1] == static_cast<float>(13.0 / 3.0));
  CHECK(std::isnan(out[2]));
  CHECK(out[3] == float(Inf));
  CHECK(out[4] == static_cast<float>(1.0 / 3.0));  // double accumulation: 1e8 + 1 - 1e8 = 1
  Rows<double> rd(2, 1, {0.1, 0.2});
  double o;
  cpu::average(rd.p(), 2, 1, &o);
  CHECK(o == (0.1 + 0.2) / 2);
}

TEST_CASE("average-nan: mean of the finite values, none -> 0") {
  // columns: (1,NaN,3) (inf,NaN,-inf) (NaN,5,inf) (2,2,2)
  Rows<float> r(3, 4, {1, Inf, NaN, 2, NaN, NaN, 5, 2, 3, -Inf, Inf, 2});
  std::vector<float> out(4);
  cpu::average_nan(r.p(), 3, 4, out.data());
  CHECK(out[0] == 2.0f);
  CHECK(out[1] == 0.0f && !std::signbit(out[1]));
  CHECK(out[2] == 5.0f);
  CHECK(out[3] == 2.0f);
}

TEST_CASE("median: odd, even, ties, NaN, +-inf, all absent") {
  // n = 5, columns:
  //  c0 (3,1,4,1,5) -> 3        c1 (1,2,3,4,NaN) -> k=4: 2.5
  //  c2 (NaN,Inf,-Inf,2,NaN) -> 2   c3 all NaN -> 0
  //  c4 (7,7,7,1,1) -> 7        c5 (1,NaN,2,100,4) -> 1,2,4,100: 3
  //  c6 (-Inf, -1, -2, Inf, 5) -> -2,-1,5: -1
  std::vector<double> cols[7] = {{3, 1, 4, 1, 5},     {1, 2, 3, 4, NaN},     {NaN, Inf, -Inf, 2, NaN},
                                 {NaN, NaN, NaN, NaN, NaN}, {7, 7, 7, 1, 1}, {1, NaN, 2, 100, 4},
                                 {-Inf, -1, -2, Inf, 5}};
  const double expect[7] = {3, 2.5, 2, 0, 7, 3, -1};
  std::vector<double> flat(5 * 7);
  for (std::size_t i = 0; i < 5; ++i)
    for (std::size_t j = 0; j < 7; ++j) flat[i * 7 + j] = cols[j][i];
  Rows<float> rf(5, 7, flat);
  Rows<double> rd(5, 7, flat);
  std::vector<float> of(7);
  std::vector<double> od(7);
  cpu::median(rf.p(), 5, 7, of.data());
  cpu::median(rd.p(), 5, 7, od.data());
  for (std::size_t j = 0; j < 7; ++j) {
    CHECK_MSG(of[j] == float(expect[j]), "col " + std::to_string(j) + " got " + fmtv(of[j]));
    CHECK_MSG(od[j] == expect[j], "col " + std::to_string(j) + " got " + fmtv(od[j]));
  }
  // n = 4 even, all finite (fast path): (1,2,3,4) -> 2.5 ; (0.1, 0.2, 5, -5) -> (0.1+0.2)/2 in double
  Rows<double> r4(4, 2, {1, 0.1, 2, 0.2, 3, 5, 4, -5});
  double o4[2];
  cpu::median(r4.p(), 4, 2, o4);
  CHECK(o4[0] == 2.5);
  CHECK(o4[1] == (0.1 + 0.2) / 2);
  // (a+b) overflowing a double: a/2 + b/2
  Rows<double> big(2, 1, {1.5e308, 1.7e308});
  double ob;
  cpu::median(big.p(), 2, 1, &ob);
  CHECK(ob == 1.5e308 / 2 + 1.7e308 / 2);
  // float even count: mean in double, then rounded once
  Rows<float> rf2(2, 1, {1.0, double(1.0f + std::ldexp(1.0f, -23))});
  float of2;
  cpu::median(rf2.p(), 2, 1, &of2);
  CHECK(of2 == static_cast<float>((1.0 + double(1.0f + std::ldexp(1.0f, -23))) / 2));
  // n = 1
  Rows<float> r1(1, 3, {NaN, -2, Inf});
  float o1[3];
  cpu::median(r1.p(), 1, 3, o1);
  CHECK(o1[0] == 0 && o1[1] == -2 && o1[2] == 0);
}

TEST_CASE("trimmed-mean: -inf smallest, NaN largest, drop f each side") {
  // n = 5, f = 1:
  //  c0 (5,-inf,1,NaN,3) -> drop -inf, NaN -> (1+3+5)/3 = 3
  //  c1 (NaN,NaN,1,2,3)  -> 1,2,3,inf,inf -> kept 2,3,inf -> inf
  //  c2 (-inf,-inf,1,2,3) -> kept -inf -> -inf
  //  c3 (1,2,3,4,100)    -> (2+3+4)/3 = 3
  //  c4 (2,2,2,2,1)      -> 2
  //  c5 (inf,-inf,0,1,2) -> (0+1+2)/3 = 1
  std::vector<double> cols[6] = {{5, -Inf, 1, NaN, 3}, {NaN, NaN, 1, 2, 3}, {-Inf, -Inf, 1, 2, 3},
                                 {1, 2, 3, 4, 100},   {2, 2, 2, 2, 1},     {Inf, -Inf, 0, 1, 2}};
  const double expect[6] = {3, Inf, -Inf, 3, 2, 1};
  std::vector<double> flat(5 * 6);
  for (std::size_t i = 0; i < 5; ++i)
    for (std::size_t j = 0; j < 6; ++j) flat[i * 6 + j] = cols[j][i];
  Rows<float> rf(5, 6, flat);
  Rows<double> rd(5, 6, flat);
  std::vector<float> of(6);
  std::vector<double> od(6);
  cpu::trimmed_mean(rf.p(), 5, 6, 1, of.data());
  cpu::trimmed_mean(rd.p(), 5, 6, 1, od.data());
  for (std::size_t j = 0; j < 6; ++j) {
    CHECK_MSG(of[j] == float(expect[j]), "col " + std::to_string(j) + " got " + fmtv(of[j]));
    CHECK_MSG(od[j] == expect[j], "col " + std::to_string(j) + " got " + fmtv(od[j]));
  }
  // f = 2, n = 6: (10, 1, 2, 3, 4, -10) -> (2+3)/2 = 2.5 ; f = 0 -> average
  Rows<double> r6(6, 1, {10, 1, 2, 3, 4, -10});
  double o;
  cpu::trimmed_mean(r6.p(), 6, 1, 2, &o);
  CHECK(o == 2.5);
  cpu::trimmed_mean(r6.p(), 6, 1, 0, &o);
  CHECK(o == 10.0 / 6.0);
}

TEST_CASE("averaged-median: window around the median, ties to the smaller value") {
  // n = 5 columns, various beta:
  struct Case {
    std::vector<double> col;
    std::size_t beta;
    double expect;
  } cases[] = {
      {{1, 2, 3, 10, 11}, 3, 2.0},        // m=3: 3,2,1 -> 2
      {{1, 2, 3, 10, 11}, 4, 4.0},        // + 10 (dist 7 < 8) -> 16/4
      {{5, 1, 3, NaN, NaN}, 2, 2.0},      // m=3, k=3: 1 and 5 tie -> 1: (1+3)/2
      {{0, 2, 4, 6, NaN}, 2, 3.0},        // k=4, m=3: 2 and 4 (tie, both)
      {{0, 2, 4, 6, NaN}, 1, 2.0},        // tie 2 vs 4 -> 2
      {{0, 2, 4, 6, NaN}, 3, 2.0},        // 2,4 then 0 vs 6 tie -> 0: 6/3
      {{1, NaN, 3, Inf, 5}, 4, 3.0},      // k=3 < beta: all finite values
      {{NaN, Inf, -Inf, NaN, NaN}, 3, 0.0},  // k=0
      {{-Inf, 7, 7, 7, 100}, 4, 121.0 / 4},  // k=4: m=7: 7,7,7 then 100 -> 121/4
      {{4, 4, 4, 4, 4}, 5, 4.0},
      {{-3, -1, 0, 2, 9}, 2, -0.5},       // m=0: -1 (1) vs 2 (2): -1 -> (-1+0)/2
  };
  for (const auto& c : cases) {
    Rows<float> rf(5, 1, c.col);
    Rows<double> rd(5, 1, c.col);
    float of;
    double od;
    cpu::averaged_median(rf.p(), 5, 1, c.beta, &of);
    cpu::averaged_median(rd.p(), 5, 1, c.beta, &od);
    CHECK_MSG(of == float(c.expect), "beta=" + std::to_string(c.beta) + " got " + fmtv(of) + " want " + fmtv(c.expect));
    CHECK_MSG(od == c.expect, "beta=" + std::to_string(c.beta) + " got " + fmtv(od) + " want " + fmtv(c.expect));
    CHECK(ref_avgmed(rd, 0, c.beta) == c.expect);  // the reference agrees with the hand values
  }
}

// ------------------------------------------------- random vs reference ---
namespace {

// Values from a small integer set (many ties; every sum exact) with NaN/+-inf.
template <typename T>
Rows<T> random_rows(std::size_t n, std::size_t d, std::mt19937_64& rng, double p_special, bool integers) {
  Rows<T> r(n, d);
  std::uniform_int_distribution<int> small(-6, 6);
  std::normal_distribution<double> gauss(0.0, 1.0);
  std::uniform_real_distribution<double> u(0, 1);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < d; ++j) {
      double v = integers ? small(rng) : gauss(rng);
      const double q = u(rng);
      if (q < p_special / 3) v = NaN;
      else if (q < 2 * p_special / 3) v = Inf;
      else if (q < p_special) v = -Inf;
      r.data[i][j] = static_cast<T>(v);
    }
  return r;
}

template <typename T>
void compare_all(std::size_t n, std::size_t d, std::mt19937_64& rng, double p_special, bool integers) {
  Rows<T> r = random_rows<T>(n, d, rng, p_special, integers);
  std::vector<T> out(d);
  const std::string tag = std::string(sizeof(T) == 4 ? "f32" : "f64") + " n=" + std::to_string(n) +
                          " d=" + std::to_string(d) + " special=" + fmtv(p_special);
  int bad = 0;
  auto expect_eq = [&](const char* rule, std::size_t j, T got, T want, bool exact) {
    bool ok = exact ? same_bits(got, want)
                    : (same_bits(got, want) || std::fabs(double(got) - double(want)) <=
                                                   1e-6 * (1 + std::fabs(double(want))));
    if (!ok && bad++ < 5)
      CHECK_MSG(false, std::string(rule) + " " + tag + " j=" + std::to_string(j) + " got " + fmtv(got) + " want " +
                           fmtv(want));
  };
  cpu::average(r.p(), n, d, out.data());
  for (std::size_t j = 0; j < d; ++j) expect_eq("average", j, out[j], ref_average(r, j), true);
  cpu::average_nan(r.p(), n, d, out.data());
  for (std::size_t j = 0; j < d; ++j) expect_eq("average_nan", j, out[j], ref_average_nan(r, j), true);
  cpu::median(r.p(), n, d, out.data());
  for (std::size_t j = 0; j < d; ++j) expect_eq("median", j, out[j], ref_median(r, j), true);
  const std::size_t fstep = n > 100 ? n / 5 : n > 12 ? 3 : 1;
  for (std::size_t f = 0; 2 * f < n; f += fstep) {
    cpu::trimmed_mean(r.p(), n, d, f, out.data());
    for (std::size_t j = 0; j < d; ++j) expect_eq("trimmed_mean", j, out[j], ref_trimmed(r, j, f), integers);
  }
  const std::size_t bstep = n > 100 ? n / 3 : n > 12 ? 4 : 1;
  for (std::size_t beta = 1; beta <= n; beta += bstep) {
    cpu::averaged_median(r.p(), n, d, beta, out.data());
    for (std::size_t j = 0; j < d; ++j) expect_eq("averaged_median", j, out[j], ref_avgmed(r, j, beta), true);
  }
}

}  // namespace

TEST_CASE("random inputs match the scalar reference (n = 1..25, 33, 64; tile tails)") {
  std::mt19937_64 rng(12345);
  for (std::size_t n : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 19, 20, 21, 24, 25, 33, 64})
    for (std::size_t d : {1, 7, 33, 1013})
      for (double ps : {0.0, 0.1, 0.4}) {
        compare_all<float>(n, d, rng, ps, true);
        compare_all<double>(n, d, rng, ps, true);
        if (d == 1013) {
          compare_all<float>(n, d, rng, ps, false);
          compare_all<double>(n, d, rng, ps, false);
        }
      }
}

TEST_CASE("large n takes the per-lane sort path with the same results") {
  std::mt19937_64 rng(7);
  compare_all<float>(4100, 3, rng, 0.1, true);
  compare_all<double>(4097, 2, rng, 0.0, false);
}

TEST_CASE("through the API: contiguous block and row pointers agree") {
  std::mt19937_64 rng(99);
  const std::size_t n = 9, d = 1000 + 13;
  Rows<float> r = random_rows<float>(n, d, rng, 0.0, false);
  // f = 2 non-finite rows (NaN, +inf, -inf scattered in rows 0 and 5): every
  // robust rule must stay finite.
  for (std::size_t j = 0; j < d; j += 3) r.data[j % 2 ? 0 : 5][j] = j % 5 == 0 ? NaN : j % 5 == 1 ? -Inf : Inf;
  std::vector<float> block(n * d);
  for (std::size_t i = 0; i < n; ++i) std::copy(r.data[i].begin(), r.data[i].end(), block.begin() + i * d);
  for (const char* name : {"average", "average-nan", "median", "trimmed-mean", "averaged-median"}) {
    RuleConfig c;
    CHECK(make_rule(name, 2, {}, &c).ok());
    GradView a, b;
    a.data = block.data();
    a.n = b.n = n;
    a.d = b.d = d;
    std::vector<const void*> ptrs(r.ptr.begin(), r.ptr.end());
    b.rows = ptrs.data();
    std::vector<float> oa(d), ob(d);
    Status s1 = aggregate(c, a, oa.data()), s2 = aggregate(c, b, ob.data());
    CHECK_MSG(s1.ok() && s2.ok(), s1.message() + s2.message());
    CHECK_MSG(same_bits(oa, ob), name);
    if (std::string(name) != "average")
      for (float v : oa) CHECK(std::isfinite(v));
  }
}

TEST_CASE("same bits with 1 and 2 threads") {
#ifdef _OPENMP
  std::mt19937_64 rng(5);
  const std::size_t n = 11, d = 100003;
  Rows<float> r = random_rows<float>(n, d, rng, 0.02, false);
  Rows<double> rd = random_rows<double>(n, d, rng, 0.02, false);
  const int saved = omp_get_max_threads();
  auto run = [&](int threads, auto& rows, auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    omp_set_num_threads(threads);
    std::vector<T> all;
    std::vector<T> o(d);
    cpu::average(rows.p(), n, d, o.data());
    all.insert(all.end(), o.begin(), o.end());
    cpu::average_nan(rows.p(), n, d, o.data());
    all.insert(all.end(), o.begin(), o.end());
    cpu::median(rows.p(), n, d, o.data());
    all.insert(all.end(), o.begin(), o.end());
    cpu::trimmed_mean(rows.p(), n, d, 3, o.data());
    all.insert(all.end(), o.begin(), o.end());
    cpu::averaged_median(rows.p(), n, d, 8, o.data());
    all.insert(all.end(), o.begin(), o.end());
    return all;
  };
  CHECK(same_bits(run(1, r, (float*)nullptr), run(2, r, (float*)nullptr)));
  CHECK(same_bits(run(1, rd, (double*)nullptr), run(3, rd, (double*)nullptr)));
  omp_set_num_threads(saved);
#else
  std::printf("  (built without OpenMP)\n");
#endif
}

// ------------------------------------------------------------ timing (opt-in) ---
TEST_CASE("timing n=20 d=1e6 float32 (PYAGG_TIMING=1)") {
  if (!std::getenv("PYAGG_TIMING")) return;
  const std::size_t n = 20, d = 1000000, f = 4;
  std::vector<float> block(n * d);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> g(0, 1);
  for (auto& v : block) v = g(rng);
  std::vector<const float*> rows(n);
  for (std::size_t i = 0; i < n; ++i) rows[i] = block.data() + i * d;
  std::vector<float> out(d);
  auto time = [&](const char* name, auto fn) {
    fn();
    double best = 1e9;
    for (int r = 0; r < 7; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("  %-18s %8.2f ms  %6.2f GB/s\n", name, best * 1e3, double(n * d * 4) / best / 1e9);
  };
  time("average", [&] { cpu::average(rows.data(), n, d, out.data()); });
  time("average-nan", [&] { cpu::average_nan(rows.data(), n, d, out.data()); });
  time("median", [&] { cpu::median(rows.data(), n, d, out.data()); });
  time("trimmed-mean f=4", [&] { cpu::trimmed_mean(rows.data(), n, d, f, out.data()); });
  time("averaged-median", [&] { cpu::averaged_median(rows.data(), n, d, n - f, out.data()); });
  block[5 * d + 17] = std::numeric_limits<float>::quiet_NaN();  // one tile on the slow path
  time("median (1 NaN)", [&] { cpu::median(rows.data(), n, d, out.data()); });
  for (std::size_t j = 0; j < d; j += 1) block[(j % n) * d + j] = std::numeric_limits<float>::quiet_NaN();
  time("median (NaN/col)", [&] { cpu::median(rows.data(), n, d, out.data()); });
}

CHECK_MAIN()
