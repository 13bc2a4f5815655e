// Native CPU benchmark of every rule and pre-aggregator, through the engine's
// public API (the same path every front end takes).
//
// For each rule: median of `reps` timed calls after a warm-up, GB/s of input
// read (n*d*sizeof(T) / time) and the ratio to this machine's memory bandwidth
// measured in the same run (a multi-threaded sum over a buffer of the same
// size as G, i.e. the cost of reading G once: the floor of any rule that must
// read every gradient). Results are verified to be finite (honest input).
//
// Usage: cpu_bench [n=20] [f=4] [d=1000000] [reps=7] [rule|all]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "pyagg/rules.h"

using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

template <typename F>
static double median_time(F&& fn, int reps) {
  fn();  // warm-up
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    fn();
    t.push_back(seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Read bandwidth: sum a buffer of `count` floats with all threads, 16 independent
// lanes per thread (vectorised, no dependency chain), so the loop is bound by
// memory, not by add latency: the cost of one pass over G.
static double read_bandwidth(const float* buf, std::size_t count, int reps) {
  volatile float sink = 0;
  const std::int64_t blocks = std::int64_t(count / 16);
  double t = median_time(
      [&] {
        float total = 0;
#pragma omp parallel reduction(+ : total)
        {
          float acc[16] = {0};
#pragma omp for schedule(static)
          for (std::int64_t b = 0; b < blocks; ++b)
            for (int k = 0; k < 16; ++k) acc[k] += buf[b * 16 + k];
          for (int k = 0; k < 16; ++k) total += acc[k];
        }
        sink = total;
      },
      reps);
  (void)sink;
  return double(blocks) * 16 * sizeof(float) / t / 1e9;
}

int main(int argc, char** argv) {
  std::size_t n = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 20;
  std::size_t f = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 4;
  std::size_t d = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 1000000;
  int reps = argc > 4 ? std::atoi(argv[4]) : 7;
  std::string only = argc > 5 ? argv[5] : "all";

  std::vector<float> G(n * d);
  std::mt19937_64 rng(42);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> base(d);
  for (auto& v : base) v = nd(rng);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < d; ++j) G[i * d + j] = base[j] + 0.5f * nd(rng);

  pyagg::BuildInfo bi = pyagg::build_info();
  double bw = read_bandwidth(G.data(), G.size(), reps);
  const double gbytes = double(n) * d * sizeof(float) / 1e9;
  std::printf("pyagg %s cpu_bench: n=%zu f=%zu d=%zu float32 (%.0f MB), %d threads, native=%d\n", bi.version, n, f,
              d, gbytes * 1e3, bi.max_threads, int(bi.native_arch));
  std::printf("memory read bandwidth (parallel 16-lane sum over a G-sized buffer): %.2f GB/s\n\n", bw);
  std::printf("%-22s %10s %10s %10s\n", "rule", "ms", "GB/s", "of bw");

  pyagg::GradView g;
  g.data = G.data();
  g.n = n;
  g.d = d;
  g.dtype = pyagg::DType::kFloat32;
  std::vector<float> out(n * d);
  int failures = 0;
  // Every rule with its defaults; parameters without a default (zeroing's
  // tau) get a value that keeps every row; plus a few non-default variants.
  struct Run {
    std::string label, rule;
    std::vector<pyagg::NamedParam> params;
  };
  std::vector<Run> runs;
  for (const auto& info : pyagg::rule_table()) {
    std::vector<pyagg::NamedParam> p;
    if (std::string(info.name) == "zeroing") p = {{"tau", 1e30}};
    runs.push_back({info.name, info.name, p});
  }
  runs.push_back({"dnc(b=d)", "dnc", {{"b", double(d)}}});
  runs.push_back({"zeroing(L2,drop)", "zeroing", {{"tau", 1e30}, {"norm_order", 2}, {"mode", 0, "drop"}}});
  for (const auto& run : runs) {
    if (only != "all" && only != run.rule && only != run.label) continue;
    pyagg::RuleConfig cfg;
    pyagg::Status st = pyagg::make_rule(run.rule, std::int64_t(f), run.params, &cfg);
    if (st.ok()) st = pyagg::check_rule_input(cfg, n, d);
    if (!st.ok()) {
      std::printf("%-22s skipped: %s\n", run.label.c_str(), st.message().c_str());
      continue;
    }
    double t = median_time([&] { st = pyagg::aggregate(cfg, g, out.data()); }, reps);
    bool finite = st.ok();
    for (std::size_t j = 0; j < d && finite; ++j) finite = std::isfinite(out[j]);
    if (!finite) ++failures;
    std::printf("%-22s %10.2f %10.2f %9.0f%%%s\n", run.label.c_str(), t * 1e3, gbytes / t, 100.0 * gbytes / t / bw,
                finite ? "" : "  RESULT NOT FINITE");
  }
  for (const auto& info : pyagg::pre_table()) {
    std::string name = std::string("pre:") + info.name;
    if (only != "all" && only != name) continue;
    pyagg::PreConfig cfg;
    std::vector<pyagg::NamedParam> p;
    if (std::string(info.name) == "zeroing") p = {{"tau", 1e30}};
    pyagg::Status st = pyagg::make_pre(info.name, std::int64_t(f), p, &cfg);
    if (!st.ok()) {
      std::printf("%-22s skipped: %s\n", name.c_str(), st.message().c_str());
      continue;
    }
    double t = median_time([&] { st = pyagg::preaggregate(cfg, g, out.data()); }, reps);
    bool ok = st.ok() && std::isfinite(out[0]);
    if (!ok) ++failures;
    std::printf("%-22s %10.2f %10.2f %9.0f%%%s\n", name.c_str(), t * 1e3, gbytes / t, 100.0 * gbytes / t / bw,
                ok ? "" : "  FAILED");
  }
  return failures ? 1 : 0;
}
