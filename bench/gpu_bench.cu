// Native GPU benchmark of every rule (and pre-aggregator) through the engine's
// public API (pyagg::aggregate with GradView.device = kCuda: what every front
// end calls), float32, at n=20, f=4, d=1e7 and n=100, f=20, d=1e6.
//
// For each rule: one warm-up call, then `reps` timed calls (wall clock around
// the synchronous aggregate(): kernels + host selection + copies), median time;
// GB/s of input read = n*d*4 bytes / median time; ratio = that / the device's
// copy bandwidth measured here (cudaMemcpy device-to-device of a 1 GiB buffer,
// counting bytes read + bytes written, i.e. 2*size/time: the speed at which
// the memory system moves bytes; a rule reading G once at that speed would
// score 1.0). Each result is verified once against the CPU backend on the same
// input (bitwise, or within the tolerance of tests/cpp/test_cuda.cpp).
//
// Usage: gpu_bench [--reps N] [--no-verify] [--quick] [--verify-budget SECONDS]
//                  [--config n,f,d]... [rule ...]
//   --quick: d / 10 and a 256 MiB copy buffer; --config replaces the two
//   default configurations (repeatable); rule names restrict the rules run.
// Exit status: 0 when every run succeeded and verified, 1 otherwise.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../engine/cuda/common.cuh"  // CUDA runtime (or the CPU emulator), launch helper
#include "../engine/cuda/cuda_backend.h"
#include "pyagg/device.h"
#include "pyagg/rules.h"

using namespace pyagg;
using Clock = std::chrono::steady_clock;

namespace {

#define CK(expr)                                                                                   \
  do {                                                                                             \
    cudaError_t _e = (expr);                                                                       \
    if (_e != cudaSuccess) {                                                                       \
      std::fprintf(stderr, "gpu_bench: %s failed: %s\n", #expr, cudaGetErrorString(_e));           \
      std::exit(2);                                                                                \
    }                                                                                              \
  } while (0)

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
__device__ __forceinline__ float normal01(unsigned long long h) {
  const float u1 = (float((h >> 40) & 0xFFFFFF) + 0.5f) * (1.0f / 16777216.0f);
  const float u2 = float((h >> 8) & 0xFFFFFF) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}

// Row i < f: Byzantine (sign flip x4 of the common direction + noise);
// others: honest, common direction + (1 + 0.05 i) * noise.
__global__ void fill_kernel(float* x, int n, long long d, int f, unsigned long long seed) {
  const long long total = (long long)n * d;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (long long)gridDim.x * blockDim.x) {
    const int i = int(e / d);
    const long long k = e - (long long)i * d;
    const float base = normal01(mix64(seed ^ (unsigned long long)k));
    const unsigned long long row_seed = seed + 0x1234567ull * (unsigned long long)(i + 1);
    const float noise = normal01(mix64(row_seed ^ (unsigned long long)(k * 0x9E37ull)));
    x[e] = i < f ? -4.0f * base + 0.1f * noise : base + (1.0f + 0.05f * float(i)) * noise;
  }
}

struct Config {
  std::size_t n, f, d;
};

struct Entry {
  std::string name;
  bool pre;
  std::vector<NamedParam> params;
  int tier;  // 0 bitwise, 1 sum tolerance, 2 geometric median, 3 centered clipping
};

const std::vector<Entry>& entries() {
  static const std::vector<Entry> e = {
      {"average", false, {}, 1},          {"average-nan", false, {}, 1},
      {"median", false, {}, 0},           {"trimmed-mean", false, {}, 1},
      {"averaged-median", false, {}, 1},  {"krum", false, {}, 0},
      {"multi-krum", false, {}, 1},       {"bulyan", false, {}, 1},
      {"bulyan-multikrum", false, {}, 1}, {"geometric-median", false, {}, 2},
      {"centered-clipping", false, {}, 3}, {"mda", false, {}, 1},
      {"nnm", true, {}, 1},               {"clipping", true, {}, 1},
      {"bucketing", true, {{"s", 2}, {"seed", 7}}, 1},
      {"dnc", false, {}, 1},              {"clipped-clustering", false, {}, 3},
      {"smea", false, {}, 1},             {"caf", false, {}, 3},
      {"zeroing", false, {{"tau", 1e30}}, 1}, {"zeroing", true, {{"tau", 1e30}}, 1},
  };
  return e;
}

// Same acceptance as tests/cpp/test_cuda.cpp (float32).
std::string verify(const std::vector<float>& c, const std::vector<float>& g, int tier) {
  bool bitwise = true;
  double maxabs = 0.0;
  for (std::size_t k = 0; k < c.size(); ++k) {
    if (!(c[k] == g[k] || (std::isnan(c[k]) && std::isnan(g[k])))) bitwise = false;
    if (std::isfinite(c[k])) maxabs = std::max(maxabs, std::fabs(double(c[k])));
  }
  if (bitwise) return "bitwise";
  const double rtol = tier == 0 ? 0.0 : 1e-5;
  double worst = 0.0;
  for (std::size_t k = 0; k < c.size(); ++k) {
    const double a = c[k], b = g[k];
    if (a == b || (std::isnan(a) && std::isnan(b))) continue;
    if (!std::isfinite(a) || !std::isfinite(b)) return "FAIL (non-finite mismatch)";
    const double ref = tier >= 2 ? maxabs : std::max(std::fabs(a), std::fabs(b));
    worst = std::max(worst, std::fabs(a - b) / (ref > 0 ? ref : 1.0));
  }
  char buf[96];
  std::snprintf(buf, sizeof buf, "%s (rel %.1e)", worst <= rtol ? "tol" : "FAIL", worst);
  return buf;
}

struct Row {
  std::string rule, cfg, status, verify;
  double ms = 0, gbps = 0, ratio = 0;
};

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  bool do_verify = true, quick = false;
  double verify_budget = 150.0;
  std::vector<std::string> only;
  std::vector<Config> custom;
  for (int a = 1; a < argc; ++a) {
    const std::string s = argv[a];
    if (s == "--reps" && a + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++a]));
    } else if (s == "--no-verify") {
      do_verify = false;
    } else if (s == "--quick") {
      quick = true;
    } else if (s == "--verify-budget" && a + 1 < argc) {
      verify_budget = std::atof(argv[++a]);
    } else if (s == "--config" && a + 1 < argc) {
      unsigned long long n = 0, f = 0;
      double d = 0;
      if (std::sscanf(argv[++a], "%llu,%llu,%lf", &n, &f, &d) != 3 || n == 0 || d < 1) {
        std::fprintf(stderr, "gpu_bench: --config wants n,f,d (e.g. 20,4,1e7), got '%s'\n", argv[a]);
        return 2;
      }
      custom.push_back({std::size_t(n), std::size_t(f), std::size_t(d)});
    } else if (!s.empty() && s[0] == '-') {
      std::fprintf(stderr, "gpu_bench: unknown option '%s'\n", s.c_str());
      return 2;
    } else {
      only.push_back(s);
    }
  }
  const auto t_start = Clock::now();
  int count = 0;
  Status st = cuda_device_count(&count);
  if (!st.ok()) {
    std::printf("gpu_bench: no CUDA device: %s\n", st.message().c_str());
    return 1;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  std::printf("device 0: %s, %d SMs, %.1f GiB, sm_%d%d, driver %d, runtime %d\n", prop.name, prop.multiProcessorCount,
              double(prop.totalGlobalMem) / (1 << 30), prop.major, prop.minor, drv, rt);

  // ---- device copy bandwidth ------------------------------------------------------
  double copy_gbps = 0.0;
  {
    const std::size_t bytes = quick ? std::size_t(256) << 20 : std::size_t(1) << 30;
    void *a = nullptr, *b = nullptr;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    CK(cudaMemset(b, 0, bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> t;
    for (int r = 0; r < 12; ++r) {
      CK(cudaEventRecord(e0));
      CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      if (r >= 2) t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    const double ms = t[t.size() / 2];
    copy_gbps = 2.0 * double(bytes) / (ms * 1e-3) / 1e9;
    std::printf("device-to-device copy of %zu MiB: %.3f ms median -> %.0f GB/s (read + write bytes)\n",
                bytes >> 20, ms, copy_gbps);
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    CK(cudaFree(a));
    CK(cudaFree(b));
  }

  std::vector<Config> configs = {{20, 4, 10000000}, {100, 20, 1000000}};
  if (quick) configs = {{20, 4, 1000000}, {100, 20, 100000}};
  if (!custom.empty()) configs = custom;
  std::vector<Row> rows;
  int failures = 0;
  double verify_time = 0.0;

  for (const Config& c : configs) {
    const std::size_t n = c.n, d = c.d;
    const std::size_t bytes = n * d * sizeof(float);
    char cfgname[64];
    std::snprintf(cfgname, sizeof cfgname, "n=%zu f=%zu d=%.0e", n, c.f, double(d));
    std::printf("\n== %s (G = %.0f MB float32) ==\n", cfgname, double(bytes) / 1e6);
    float* x = nullptr;
    float* out = nullptr;
    float* state = nullptr;
    CK(cudaMalloc(&x, bytes));
    CK(cudaMalloc(&out, n * d * sizeof(float)));  // pre-aggregators write n rows
    CK(cudaMalloc(&state, d * sizeof(float)));
    CK(cudaMemset(state, 0, d * sizeof(float)));
    {
      Status ls = pyagg::cuda::launch("fill kernel", fill_kernel, dim3(unsigned(prop.multiProcessorCount) * 8),
                                      dim3(256), 0, cudaStream_t(0), x, int(n), (long long)d, int(c.f), 42ull);
      if (!ls.ok()) {
        std::fprintf(stderr, "gpu_bench: %s\n", ls.message().c_str());
        return 2;
      }
      CK(cudaDeviceSynchronize());
    }
    std::vector<float> hx;  // host copy for the CPU verification (lazily)

    // Distance matrix alone (the Krum family's pass over G), through the test hook.
    {
      GradView g;
      g.data = x;
      g.n = n;
      g.d = d;
      g.dtype = DType::kFloat32;
      g.device = Device::kCuda;
      std::vector<double> D(n * n);
      Status s = pyagg::cuda::pairwise_sqdist(g, D.data());
      std::vector<double> t;
      for (int r = 0; r < reps && s.ok(); ++r) {
        auto t0 = Clock::now();
        s = pyagg::cuda::pairwise_sqdist(g, D.data());
        t.push_back(seconds_since(t0));
      }
      Row row;
      row.rule = "(distance matrix)";
      row.cfg = cfgname;
      if (s.ok()) {
        std::sort(t.begin(), t.end());
        const double sec = t[t.size() / 2];
        row.ms = sec * 1e3;
        row.gbps = double(bytes) / sec / 1e9;
        row.ratio = row.gbps / copy_gbps;
        row.status = "ok";
        row.verify = "-";
      } else {
        row.status = "ERROR: " + s.message();
        ++failures;
      }
      std::printf("  %-20s %s %9.3f ms %8.0f GB/s %6.2f\n", row.rule.c_str(), row.status.c_str(), row.ms, row.gbps,
                  row.ratio);
      rows.push_back(row);
    }

    for (const Entry& e : entries()) {
      if (!only.empty() && std::find(only.begin(), only.end(), e.name) == only.end()) continue;
      Row row;
      row.rule = e.pre ? "pre:" + e.name : e.name;
      row.cfg = cfgname;
      GradView g;
      g.data = x;
      g.n = n;
      g.d = d;
      g.dtype = DType::kFloat32;
      g.device = Device::kCuda;
      RuleConfig rc;
      PreConfig pc;
      Status s = e.pre ? make_pre(e.name, std::int64_t(c.f), e.params, &pc)
                       : make_rule(e.name, std::int64_t(c.f), e.params, &rc);
      if (s.ok()) s = e.pre ? check_pre_input(pc, n, d) : check_rule_input(rc, n, d);
      if (!s.ok()) {
        row.status = "refused";
        row.verify = s.message().substr(0, 60);
        std::printf("  %-20s refused: %s\n", row.rule.c_str(), s.message().c_str());
        rows.push_back(row);
        continue;
      }
      const std::size_t out_rows = e.pre ? pre_output_rows(pc, n) : 1;
      auto call = [&]() -> Status {
        if (e.pre) return preaggregate(pc, g, out);
        return aggregate(rc, g, out, e.name == "centered-clipping" ? state : nullptr);
      };
      s = call();  // warm-up (also sizes the workspace)
      std::vector<double> t;
      const int nrep = e.name == "geometric-median" ? std::max(1, reps / 2) : reps;
      for (int r = 0; r < nrep && s.ok(); ++r) {
        auto t0 = Clock::now();
        s = call();
        t.push_back(seconds_since(t0));
      }
      if (!s.ok()) {
        row.status = "ERROR";
        row.verify = s.message().substr(0, 60);
        std::printf("  %-20s ERROR: %s\n", row.rule.c_str(), s.message().c_str());
        ++failures;
        rows.push_back(row);
        continue;
      }
      std::sort(t.begin(), t.end());
      const double sec = t[t.size() / 2];
      row.ms = sec * 1e3;
      row.gbps = double(bytes) / sec / 1e9;
      row.ratio = row.gbps / copy_gbps;
      row.status = "ok";
      // Verification against the CPU backend, once.
      if (!do_verify) {
        row.verify = "skipped";
      } else if (seconds_since(t_start) > verify_budget) {
        row.verify = "skipped (time budget)";
      } else {
        const auto tv = Clock::now();
        if (hx.empty()) {
          hx.resize(n * d);
          CK(cudaMemcpy(hx.data(), x, bytes, cudaMemcpyDeviceToHost));
        }
        std::vector<float> gout(out_rows * d), cout(out_rows * d);
        CK(cudaMemcpy(gout.data(), out, out_rows * d * sizeof(float), cudaMemcpyDeviceToHost));
        GradView hg = g;
        hg.data = hx.data();
        hg.device = Device::kCpu;
        std::vector<float> zero(d, 0.0f);
        Status cs = e.pre ? preaggregate(pc, hg, cout.data())
                          : aggregate(rc, hg, cout.data(), e.name == "centered-clipping" ? zero.data() : nullptr);
        if (!cs.ok()) {
          row.verify = "CPU ERROR: " + cs.message().substr(0, 40);
          ++failures;
        } else {
          row.verify = verify(cout, gout, e.tier);
          if (row.verify.rfind("FAIL", 0) == 0) ++failures;
        }
        verify_time += seconds_since(tv);
      }
      std::printf("  %-20s %9.3f ms %8.0f GB/s %6.2f  verify: %s\n", row.rule.c_str(), row.ms, row.gbps, row.ratio,
                  row.verify.c_str());
      std::fflush(stdout);
      rows.push_back(row);
    }
    CK(cudaFree(x));
    CK(cudaFree(out));
    CK(cudaFree(state));
  }

  std::printf("\n==== summary (float32; GB/s = n*d*4 bytes / median time; ratio = GB/s / %.0f GB/s copy "
              "bandwidth, read+write) ====\n",
              copy_gbps);
  std::printf("%-20s %-18s %10s %9s %7s  %s\n", "rule", "config", "time ms", "GB/s", "ratio", "verified vs CPU");
  for (const Row& r : rows) {
    if (r.status == "ok")
      std::printf("%-20s %-18s %10.3f %9.0f %7.2f  %s\n", r.rule.c_str(), r.cfg.c_str(), r.ms, r.gbps, r.ratio,
                  r.verify.c_str());
    else
      std::printf("%-20s %-18s %10s %9s %7s  %s %s\n", r.rule.c_str(), r.cfg.c_str(), "-", "-", "-", r.status.c_str(),
                  r.verify.c_str());
  }
  // Where the Krum family's time goes: the distance pass vs the rest (copy of
  // the n x n matrix to the host, selection on the host, output).
  for (const Config& c : configs) {
    char cfgname[64];
    std::snprintf(cfgname, sizeof cfgname, "n=%zu f=%zu d=%.0e", c.n, c.f, double(c.d));
    double tdist = -1, tkrum = -1;
    for (const Row& r : rows) {
      if (r.cfg != cfgname || r.status != "ok") continue;
      if (r.rule == "(distance matrix)") tdist = r.ms;
      if (r.rule == "krum") tkrum = r.ms;
    }
    if (tdist > 0 && tkrum > 0)
      std::printf("%s: krum %.3f ms = distance matrix %.3f ms (incl. its copy to the host) + %.3f ms (host "
                  "selection, row copy, API overhead)\n",
                  cfgname, tkrum, tdist, tkrum - tdist);
  }
  std::printf("total %.1f s (CPU verification %.1f s); %s\n", seconds_since(t_start), verify_time,
              failures ? "FAILURES" : "all ok");
  return failures ? 1 : 0;
}
