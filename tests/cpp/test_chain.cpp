// Native tests of the fused pre-aggregator + rule kernel (engine/src/cpu/chain.cpp),
// called directly (whatever the size), against the unfused chain through the
// public API: preaggregate() into a buffer, then aggregate() on it.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
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

using testdata::NaN;
using testdata::Rows;

template <typename T>
Rows<T> gaussian_rows(std::size_t n, std::size_t d, std::uint64_t seed) {
  Rows<T> r(n, d);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  for (std::size_t i = 0; i < n; ++i) {
    const double s = (i % 3 == 0) ? 3.0 : 1.0;  // rows of three scales: no near-ties
    for (auto& v : r.data[i]) v = static_cast<T>(s * g(rng));
  }
  return r;
}

template <typename T>
DType dtype_of() {
  return sizeof(T) == 4 ? DType::kFloat32 : DType::kFloat64;
}

PreConfig pre_cfg(const std::string& name, std::size_t f, std::vector<NamedParam> params = {}) {
  PreConfig c;
  const Status st = make_pre(name, std::int64_t(f), params, &c);
  CHECK_MSG(st.ok(), st.message());
  return c;
}

// The rule resolved for m rows as the engine would (m, beta explicit).
RuleConfig rule_cfg(const std::string& name, std::size_t f, std::size_t m) {
  RuleConfig r;
  const Status st = make_rule(name, std::int64_t(f), {}, &r);
  CHECK_MSG(st.ok(), st.message());
  if (r.rule == RuleId::kMultiKrum) r.m = std::int64_t(m - f - 2 > 0 ? m - f - 2 : 1);
  if (r.rule == RuleId::kAveragedMedian) r.beta = std::int64_t(m - f);
  return r;
}

template <typename T>
std::vector<T> unfused(const PreConfig& p, const RuleConfig& r, const Rows<T>& g) {
  GradView v;
  v.rows = reinterpret_cast<const void* const*>(g.p());
  v.n = g.n();
  v.d = g.d();
  v.dtype = dtype_of<T>();
  const std::size_t m = pre_output_rows(p, g.n());
  std::vector<T> mid(m * g.d()), out(g.d());
  Status st = preaggregate(p, v, mid.data());
  CHECK_MSG(st.ok(), st.message());
  GradView w;
  w.data = mid.data();
  w.n = m;
  w.d = g.d();
  w.dtype = dtype_of<T>();
  st = aggregate(r, w, out.data());
  CHECK_MSG(st.ok(), st.message());
  return out;
}

template <typename T>
bool same(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <typename T>
void check_all(std::size_t n, std::size_t d, std::uint64_t seed) {
  Rows<T> g = gaussian_rows<T>(n, d, seed);
  g.data[1][d / 2] = T(NaN);  // one non-finite row
  const std::size_t f = 2;
  struct P {
    const char* name;
    std::vector<NamedParam> params;
  };
  const std::vector<P> pres = {{"nnm", {}}, {"bucketing", {{"s", 2, ""}, {"seed", 7, ""}}},
                               {"clipping", {}}, {"clipping", {{"tau", 30.0, ""}}},
                               // zeroing: L-inf (default) and L2 thresholds that keep some rows and
                               // zero others at d = 1001 (every row zeroed or kept at other sizes)
                               {"zeroing", {{"tau", 3.3, ""}}},
                               {"zeroing", {{"tau", 31.7, ""}, {"norm_order", 2, ""}}}};
  const char* coord[] = {"average", "average-nan", "median", "trimmed-mean", "averaged-median"};
  const char* dist[] = {"krum", "multi-krum", "mda", "bulyan"};
  for (const P& pp : pres) {
    const PreConfig p = pre_cfg(pp.name, f, pp.params);
    const std::size_t m = pre_output_rows(p, n);
    const std::size_t fr = p.pre == PreId::kBucketing ? 1 : f;
    std::vector<const char*> rules(std::begin(coord), std::end(coord));
    if (p.pre == PreId::kNnm) rules.insert(rules.end(), std::begin(dist), std::end(dist));
    for (const char* rn : rules) {
      RuleConfig r = rule_cfg(rn, fr, m);
      CHECK(chain_fusable(p.pre, r.rule));
      std::vector<T> got(d);
      cpu::pre_rule_fused<T>(p, r, g.p(), n, d, got.data());
      const std::vector<T> want = unfused<T>(p, r, g);
      CHECK_MSG(same(got, want), std::string(pp.name) + " > " + rn + " n=" + std::to_string(n) +
                                     " d=" + std::to_string(d) + " sizeof(T)=" + std::to_string(sizeof(T)));
    }
  }
}

}  // namespace

TEST_CASE("fused = unfused, bit for bit: small d (one span), float and double") {
  check_all<float>(11, 1001, 1);
  check_all<double>(11, 1001, 2);
  check_all<float>(12, 33, 3);  // d below one chunk
}

TEST_CASE("fused = unfused across several spans (ragged last span)") {
  // 11 rows of float: span = 2 MiB / 44 B -> 45056 coordinates; d spans 3.
  check_all<float>(11, 100003, 4);
  check_all<double>(11, 60001, 5);
}

TEST_CASE("pairs the fused kernel takes") {
  CHECK(chain_fusable(PreId::kNnm, RuleId::kKrum));
  CHECK(chain_fusable(PreId::kNnm, RuleId::kBulyan));
  CHECK(chain_fusable(PreId::kBucketing, RuleId::kMedian));
  CHECK(chain_fusable(PreId::kClipping, RuleId::kAverage));
  CHECK(!chain_fusable(PreId::kBucketing, RuleId::kKrum));
  CHECK(!chain_fusable(PreId::kClipping, RuleId::kKrum));
  CHECK(!chain_fusable(PreId::kNnm, RuleId::kGeometricMedian));
  CHECK(chain_fusable(PreId::kZeroing, RuleId::kAverage));
  CHECK(chain_fusable(PreId::kZeroing, RuleId::kMedian));
  CHECK(!chain_fusable(PreId::kZeroing, RuleId::kKrum));
}

TEST_CASE("aggregate_chain: CUDA views refused, bad sizes named") {
  std::vector<float> g(7 * 4, 1.0f), out(4);
  GradView v;
  v.data = g.data();
  v.n = 7;
  v.d = 4;
  RuleConfig r;
  CHECK(make_rule("krum", 1, {}, &r).ok());
  const std::vector<PreConfig> pres = {pre_cfg("bucketing", 1)};
  const Status st = aggregate_chain(r, pres, v, out.data());
  CHECK(!st.ok() && st.message().find("krum needs n >= 2f+3, got n=4, f=1") != std::string::npos);
  v.device = Device::kCuda;
  const Status sc = aggregate_chain(r, {}, v, out.data());
  CHECK(!sc.ok());
}

TEST_CASE("fused chains: same bits with 1, 2 and 3 threads") {
#ifdef _OPENMP
  const std::size_t n = 20, d = 70001;
  Rows<float> g = gaussian_rows<float>(n, d, 9);
  const int saved = omp_get_max_threads();
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> all, o(d);
    for (const char* rn : {"median", "multi-krum", "bulyan"}) {
      const PreConfig p = pre_cfg("nnm", 4);
      cpu::pre_rule_fused<float>(p, rule_cfg(rn, 4, n), g.p(), n, d, o.data());
      all.insert(all.end(), o.begin(), o.end());
    }
    cpu::pre_rule_fused<float>(pre_cfg("clipping", 4), rule_cfg("trimmed-mean", 4, n), g.p(), n, d, o.data());
    all.insert(all.end(), o.begin(), o.end());
    return all;
  };
  const auto a = run(1), b = run(2), c = run(3);
  CHECK(same(a, b) && same(a, c));
  omp_set_num_threads(saved);
#else
  std::printf("  (built without OpenMP)\n");
#endif
}

int main() { return check::run_all(); }
