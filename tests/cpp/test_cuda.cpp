// The CUDA backend against the CPU backend, through the engine's public API
// (pyagg::aggregate / preaggregate with GradView.device = kCuda, data moved
// with pyagg::device_malloc / copy_*), on the same inputs:
//   - every rule and pre-aggregator, float32 and float64, n from 1 to 150
//     (register sorting networks up to 128 values, the generic path above),
//     d not a multiple of any block size (1, 37, 4133 = kReduceBlock + 37,
//     20011) and d = 1000 (16-byte aligned rows), NaN / +inf / -inf rows, huge rows, ties, coordinates with no
//     finite value, rows 1e3 + 1e-2 noise (Gram-form cancellation);
//   - dnc, clipped-clustering, smea, caf and zeroing (rule and pre-aggregator),
//     n up to 64 (smea up to 20), sampled and full coordinates for dnc;
//   - the distance matrix itself (cuda::pairwise_sqdist vs cpu::pairwise_sqdist).
//
// Comparison (the GPU does the CPU's arithmetic, so most results are
// bit-identical; the tolerances below are what the test accepts):
//   - selections (krum, median): bitwise (NaN == NaN, -0 == +0);
//   - sums of selected values (average(-nan), trimmed-mean, averaged-median,
//     multi-krum, bulyan, bulyan-multikrum, mda, nnm, bucketing, clipping):
//     |gpu - cpu| <= 1e-5 |cpu| (float32), 1e-12 |cpu| (float64) per
//     coordinate; inf/NaN positions identical; non-bitwise results are counted
//     and reported (a different selected set would be far outside);
//   - iterative rules: geometric-median max|gpu - cpu| <= 1e-5 (float32) /
//     1e-7 (float64) max|cpu| (the stop test may fire one iteration apart);
//     centered-clipping and clipped-clustering 1e-5 / 1e-10 of max|cpu|, caf
//     1e-3 / 1e-10 of max|cpu| (see tier_of); dnc and clipped-clustering on
//     float32 x1e6 rows are not compared (near-ties, see next_rules);
//   - distance matrix: relative 1e-5 (float32: float partial sums of ~32
//     terms) / 1e-12 (float64; 1e-10 above kGramMinN rows, where the CPU
//     uses the guarded double Gram form), +inf pattern identical.
//
// Without a usable device (or without CUDA compiled in) the test checks that
// asking for CUDA fails with a clear Status and that the CPU still works, prints
// "SKIP: no CUDA device (<reason>)" and exits 0 -- unless PYAGG_TEST_GPU=1,
// which turns the skip into a failure (GPU CI machines).
// PYAGG_TEST_CUDA_LARGE=1 adds d = 2^20+3 cases.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "pyagg/config.h"
#include "pyagg/device.h"
#include "pyagg/rules.h"
#ifdef PYAGG_WITH_CUDA
#include "../cuda/cuda_backend.h"
#include "common/blocks.h"
#include "cpu/cpu_backend.h"
#endif

using namespace pyagg;

namespace {

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && std::string(v) == "1";
}

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// ---- device buffers ------------------------------------------------------------
struct DevBuf {
  void* p = nullptr;
  DevBuf() = default;
  explicit DevBuf(std::size_t bytes) {
    Status st = device_malloc(0, bytes, &p);
    if (!st.ok()) {
      std::printf("  device_malloc(%zu) failed: %s\n", bytes, st.message().c_str());
      p = nullptr;
    }
  }
  ~DevBuf() {
    if (p) (void)device_free(0, p);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
};

template <typename T>
DType dtype_of() {
  return sizeof(T) == 4 ? DType::kFloat32 : DType::kFloat64;
}
template <typename T>
const char* tname() {
  return sizeof(T) == 4 ? "f32" : "f64";
}

// ---- data ------------------------------------------------------------------------
enum class Kind {
  kSeparated,   // row i = base + (1 + 0.15 i) * noise: distinct Krum scores
  kByzNan,      // separated + one row all NaN + one row with a NaN coordinate (<= f rows)
  kByzInf,      // separated + a row with +inf, a row with -inf (<= f rows)
  kByzBig,      // separated + huge rows (sign flip x 1e6) (<= f rows)
  kTies,        // small integers: many equal values, +-0
  kHeavyNan,    // coordinate rules only: up to all values of a coordinate non-finite
  kCancel,      // 1e3 + 1e-2 noise (Gram-form cancellation)
  kHuge,        // float32: finite rows near 1e20 (float partial sums overflow)
};
const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kSeparated: return "separated";
    case Kind::kByzNan: return "byz-nan";
    case Kind::kByzInf: return "byz-inf";
    case Kind::kByzBig: return "byz-big";
    case Kind::kTies: return "ties";
    case Kind::kHeavyNan: return "heavy-nan";
    case Kind::kCancel: return "cancel";
    case Kind::kHuge: return "huge";
  }
  return "?";
}

// Which rows make_data makes Byzantine: spread over the index range.
std::vector<std::size_t> byz_rows(std::size_t n, std::size_t f) {
  std::vector<std::size_t> byz;
  for (std::size_t q = 0; q < f && q < n; ++q) byz.push_back((q * 7 + 1) % n);
  std::sort(byz.begin(), byz.end());
  byz.erase(std::unique(byz.begin(), byz.end()), byz.end());
  return byz;
}

template <typename T>
std::vector<T> make_data(std::size_t n, std::size_t d, std::size_t f, Kind kind, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> N(0.0, 1.0);
  std::vector<T> x(n * d);
  std::vector<double> base(d);
  for (auto& b : base) b = N(rng);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T inf = std::numeric_limits<T>::infinity();
  const std::vector<std::size_t> byz = byz_rows(n, f);
  for (std::size_t i = 0; i < n; ++i) {
    const double scale = 1.0 + 0.15 * double(i);
    for (std::size_t k = 0; k < d; ++k) {
      double v;
      switch (kind) {
        case Kind::kTies: v = double(int(rng() % 5) - 2) * ((rng() % 2) ? 1.0 : -1.0); break;
        case Kind::kCancel: v = 1e3 + 1e-2 * N(rng) * scale; break;
        case Kind::kHuge: v = 1e20 * (base[k] + 0.1 * scale * N(rng)); break;
        default: v = base[k] + scale * N(rng); break;
      }
      x[i * d + k] = T(v);
    }
  }
  std::uniform_int_distribution<std::size_t> U(0, d - 1);
  for (std::size_t q = 0; q < byz.size(); ++q) {
    T* r = x.data() + byz[q] * d;
    switch (kind) {
      case Kind::kByzNan:
        if (q % 2 == 0)
          for (std::size_t k = 0; k < d; ++k) r[k] = nan;
        else
          r[U(rng)] = nan;
        break;
      case Kind::kByzInf: r[U(rng)] = (q % 2 == 0) ? inf : -inf; break;
      case Kind::kByzBig:
        for (std::size_t k = 0; k < d; ++k) r[k] = T(-1e6 * double(r[k]));
        break;
      default: break;
    }
  }
  if (kind == Kind::kHeavyNan) {
    // Coordinate k: (k % (n+2)) values replaced by NaN / +-inf (0 .. n+1: some
    // coordinates have no finite value at all).
    for (std::size_t k = 0; k < d; ++k) {
      const std::size_t bad = k % (n + 2);
      for (std::size_t i = 0; i < n && i < bad; ++i) {
        const std::size_t row = (i * 5 + k) % n;
        const int t = int((k + i) % 3);
        x[row * d + k] = t == 0 ? nan : (t == 1 ? inf : -inf);
      }
    }
  }
  return x;
}

// ---- running both backends ----------------------------------------------------------
template <typename T>
struct Run {
  Status cpu, gpu;
  std::vector<T> c, g;
};

template <typename T>
Run<T> run_rule(const RuleConfig& cfg, const std::vector<T>& x, std::size_t n, std::size_t d,
                const std::vector<T>* state) {
  Run<T> r;
  r.c.assign(d, T(-7));
  r.g.assign(d, T(-7));
  GradView cv;
  cv.data = x.data();
  cv.n = n;
  cv.d = d;
  cv.dtype = dtype_of<T>();
  cv.device = Device::kCpu;
  std::size_t hist0 = 0;
  if (cfg.history) {
    std::lock_guard<std::mutex> lock(cfg.history->mu);
    hist0 = cfg.history->norms.size();
  }
  r.cpu = aggregate(cfg, cv, r.c.data(), state ? state->data() : nullptr);

  DevBuf dx(n * d * sizeof(T)), dout(d * sizeof(T)), dst(state ? d * sizeof(T) : 0);
  if (!dx.p || !dout.p || (state && !dst.p)) {
    r.gpu = Status::Device("device_malloc failed");
    return r;
  }
  Status st = copy_host_to_device(0, dx.p, x.data(), n * d * sizeof(T));
  if (st.ok() && state) st = copy_host_to_device(0, dst.p, state->data(), d * sizeof(T));
  if (!st.ok()) {
    r.gpu = st;
    return r;
  }
  GradView gv = cv;
  gv.data = dx.p;
  gv.device = Device::kCuda;
  gv.device_id = 0;
  // A rule with state across calls (clipped-clustering's norm history) must start the GPU call
  // from the state the CPU call started from, not from the CPU call's result.
  RuleConfig gcfg = cfg;
  if (cfg.history) {
    gcfg.history = std::make_shared<NormHistory>();
    std::lock_guard<std::mutex> lock(cfg.history->mu);
    gcfg.history->norms.assign(cfg.history->norms.begin(), cfg.history->norms.begin() + std::ptrdiff_t(hist0));
  }
  r.gpu = aggregate(gcfg, gv, dout.p, state ? dst.p : nullptr);
  if (r.gpu.ok()) r.gpu = copy_device_to_host(0, r.g.data(), dout.p, d * sizeof(T));
  return r;
}

template <typename T>
Run<T> run_pre(const PreConfig& cfg, const std::vector<T>& x, std::size_t n, std::size_t d) {
  Run<T> r;
  const std::size_t rows = pre_output_rows(cfg, n);
  r.c.assign(rows * d, T(-7));
  r.g.assign(rows * d, T(-7));
  GradView cv;
  cv.data = x.data();
  cv.n = n;
  cv.d = d;
  cv.dtype = dtype_of<T>();
  r.cpu = preaggregate(cfg, cv, r.c.data());
  DevBuf dx(n * d * sizeof(T)), dout(rows * d * sizeof(T));
  if (!dx.p || !dout.p) {
    r.gpu = Status::Device("device_malloc failed");
    return r;
  }
  r.gpu = copy_host_to_device(0, dx.p, x.data(), n * d * sizeof(T));
  if (!r.gpu.ok()) return r;
  GradView gv = cv;
  gv.data = dx.p;
  gv.device = Device::kCuda;
  r.gpu = preaggregate(cfg, gv, dout.p);
  if (r.gpu.ok()) r.gpu = copy_device_to_host(0, r.g.data(), dout.p, rows * d * sizeof(T));
  return r;
}

// ---- comparison -----------------------------------------------------------------------
enum class Tier { kBitwise, kSum, kGeoMedian, kClipIter, kCaf };

struct Stats {
  int cases = 0, bitwise = 0, tolerance = 0, matrices = 0;
};
Stats& stats() {
  static Stats s;
  return s;
}

template <typename T>
bool same_value(T a, T b) {
  return a == b || (std::isnan(a) && std::isnan(b));
}

// Returns true when acceptable; `note` says why not / how far.
template <typename T>
bool compare(const std::vector<T>& c, const std::vector<T>& g, Tier tier, std::string* note) {
  bool bitwise = true;
  double maxabs_c = 0.0;
  for (std::size_t k = 0; k < c.size(); ++k) {
    if (!same_value(c[k], g[k])) bitwise = false;
    if (std::isfinite(double(c[k]))) maxabs_c = std::max(maxabs_c, std::fabs(double(c[k])));
  }
  ++stats().cases;
  if (bitwise) {
    ++stats().bitwise;
    return true;
  }
  const bool f32 = sizeof(T) == 4;
  double rtol = 0.0;
  bool norm_based = false;
  switch (tier) {
    case Tier::kBitwise: rtol = 0.0; break;
    case Tier::kSum: rtol = f32 ? 1e-5 : 1e-12; break;
    case Tier::kGeoMedian: rtol = f32 ? 1e-5 : 1e-7; norm_based = true; break;
    case Tier::kClipIter: rtol = f32 ? 1e-5 : 1e-10; norm_based = true; break;
    case Tier::kCaf: rtol = f32 ? 1e-3 : 1e-10; norm_based = true; break;
  }
  double worst = 0.0;
  std::size_t worst_k = 0;
  bool ok = true;
  for (std::size_t k = 0; k < c.size(); ++k) {
    const double a = double(c[k]), b = double(g[k]);
    if (same_value(c[k], g[k])) continue;
    if (!std::isfinite(a) || !std::isfinite(b)) {
      ok = false;
      worst_k = k;
      worst = std::numeric_limits<double>::infinity();
      break;
    }
    const double ref = norm_based ? maxabs_c : std::max(std::fabs(a), std::fabs(b));
    const double err = std::fabs(a - b) / (ref > 0 ? ref : 1.0);
    if (err > worst) {
      worst = err;
      worst_k = k;
    }
    if (std::fabs(a - b) > rtol * ref) ok = false;
  }
  char buf[256];
  std::snprintf(buf, sizeof buf, "max rel err %.3g at k=%zu (cpu %.17g gpu %.17g), tolerance %.1g", worst, worst_k,
                double(c[worst_k]), double(g[worst_k]), rtol);
  *note = buf;
  if (ok) ++stats().tolerance;
  return ok;
}

Tier tier_of(RuleId id) {
  switch (id) {
    case RuleId::kKrum:
    case RuleId::kMedian: return Tier::kBitwise;
    case RuleId::kGeometricMedian: return Tier::kGeoMedian;
    case RuleId::kCenteredClipping:
    case RuleId::kClippedClustering:  // clipping scales from the row norms
      return Tier::kClipIter;
    // Weights c_i (1 - tau_i / tau_max): the float32 distances' ~1e-7 relative
    // error (float partial sums, differently grouped on each backend) is
    // amplified where tau_i is close to tau_max.
    case RuleId::kCaf: return Tier::kCaf;
    default: return Tier::kSum;
  }
}

bool g_verbose = false;
bool g_large = false;

template <typename T>
void check_rule(const std::string& name, std::int64_t f, const std::vector<NamedParam>& params, Kind kind,
                std::size_t n, std::size_t d, std::uint64_t seed, bool with_state = false) {
  RuleConfig cfg;
  Status st = make_rule(name, f, params, &cfg);
  CHECK_MSG(st.ok(), st.message());
  if (!st.ok() || !check_rule_input(cfg, n, d).ok()) return;  // below the rule's bound: not a comparison case
  const auto x = make_data<T>(n, d, std::size_t(f), kind, seed);
  std::vector<T> state;
  if (with_state) {
    state.resize(d);
    for (std::size_t k = 0; k < d; ++k) state[k] = T(0.01 * double(k % 17) - 0.05);
  }
  const auto r = run_rule<T>(cfg, x, n, d, with_state ? &state : nullptr);
  char what[200];
  std::snprintf(what, sizeof what, "%s %s f=%lld n=%zu d=%zu %s", name.c_str(), tname<T>(), (long long)f, n, d,
                kind_name(kind));
  CHECK_MSG(r.cpu.ok(), std::string(what) + ": cpu: " + r.cpu.message());
  CHECK_MSG(r.gpu.ok(), std::string(what) + ": gpu: " + r.gpu.message());
  if (!r.cpu.ok() || !r.gpu.ok()) return;
  std::string note;
  const bool ok = compare(r.c, r.g, tier_of(cfg.rule), &note);
  CHECK_MSG(ok, std::string(what) + ": " + note);
  if (ok && !note.empty() && g_verbose)
    std::printf("  note: %s: not bitwise, within tolerance: %s\n", what, note.c_str());
}

template <typename T>
void check_pre(const std::string& name, std::int64_t f, const std::vector<NamedParam>& params, Kind kind,
               std::size_t n, std::size_t d, std::uint64_t seed) {
  PreConfig cfg;
  Status st = make_pre(name, f, params, &cfg);
  CHECK_MSG(st.ok(), st.message());
  if (!st.ok() || !check_pre_input(cfg, n, d).ok()) return;
  const auto x = make_data<T>(n, d, std::size_t(f), kind, seed);
  auto r = run_pre<T>(cfg, x, n, d);
  if (cfg.pre == PreId::kNnm && kind == Kind::kByzBig && r.cpu.ok() && r.gpu.ok()) {
    // The output row of a x1e6 Byzantine row mixes its nearest rows, whose
    // distances to it differ by ~1e-8 relative: below the float partial sums'
    // precision of both backends, a genuine tie. Compare the honest rows only.
    for (std::size_t i : byz_rows(n, std::size_t(f)))
      for (std::size_t k = 0; k < d; ++k) r.g[i * d + k] = r.c[i * d + k];
  }
  char what[200];
  std::snprintf(what, sizeof what, "pre %s %s f=%lld n=%zu d=%zu %s", name.c_str(), tname<T>(), (long long)f, n, d,
                kind_name(kind));
  CHECK_MSG(r.cpu.ok(), std::string(what) + ": cpu: " + r.cpu.message());
  CHECK_MSG(r.gpu.ok(), std::string(what) + ": gpu: " + r.gpu.message());
  if (!r.cpu.ok() || !r.gpu.ok()) return;
  std::string note;
  const bool ok = compare(r.c, r.g, Tier::kSum, &note);
  CHECK_MSG(ok, std::string(what) + ": " + note);
  if (ok && !note.empty() && g_verbose)
    std::printf("  note: %s: not bitwise, within tolerance: %s\n", what, note.c_str());
}

struct Size {
  std::size_t n, f;
};
const std::vector<Size>& sizes() {
  static const std::vector<Size> s = {{1, 0}, {2, 0}, {3, 0},  {5, 1},   {7, 1},   {11, 2},
                                      {20, 4}, {23, 5}, {64, 8}, {100, 20}, {150, 30}};
  return s;
}
std::vector<std::size_t> dims(std::size_t n) {
  // Keep n*d moderate: every case also runs on the CPU.
  // 1000: a multiple of 4 and 8 (the distance kernel's 16-byte copy path).
  std::vector<std::size_t> v = {1, 37, 1000, 4133};
  if (n <= 64) v.push_back(20011);
  if (g_large && n <= 23) v.push_back((std::size_t(1) << 20) + 3);
  return v;
}

const char* const kCoordRules[] = {"average", "average-nan", "median", "trimmed-mean", "averaged-median"};
const char* const kDistRules[] = {"krum", "multi-krum", "bulyan", "bulyan-multikrum", "mda"};

template <typename T>
void coordinate_rules() {
  std::uint64_t seed = 1;
  for (const auto& s : sizes())
    for (std::size_t d : dims(s.n))
      for (Kind kind : {Kind::kSeparated, Kind::kTies, Kind::kHeavyNan, Kind::kByzNan})
        for (const char* rule : kCoordRules) check_rule<T>(rule, std::int64_t(s.f), {}, kind, s.n, d, seed++);
  // averaged-median with an explicit beta; f=0 trimmed mean.
  check_rule<T>("averaged-median", 4, {{"beta", 3}}, Kind::kSeparated, 20, 1031, 77);
  check_rule<T>("averaged-median", 4, {{"beta", 16}}, Kind::kTies, 20, 1031, 78);
  check_rule<T>("trimmed-mean", 0, {}, Kind::kTies, 9, 1031, 79);
  // Every register-kernel size class (coord_reg.cuh q_for: Q = n up to 32,
  // then the next multiple of 8 up to 128 (float) / 64 (double), padding
  // wires n..Q-1 at +inf; above, the generic kernel): n at both ends of each
  // class, d = 37 and 1000 (no multiple of the 128/256-thread blocks but 1000
  // is 8-aligned), all-finite and heavy-NaN coordinates (the median position
  // and the averaged-median window then depend on the finite count), f from 0
  // to its bound, beta below and at n - f.
  const std::size_t ns[] = {4, 6, 17, 31, 32, 33, 39, 40, 41, 47, 48, 56, 63, 64, 65, 71, 72, 89, 96, 97,
                            101, 104, 105, 112, 119, 120, 121, 127, 128, 129};
  for (std::size_t n : ns)
    for (std::size_t d : {std::size_t(37), std::size_t(1000)})
      for (Kind kind : {Kind::kSeparated, Kind::kHeavyNan}) {
        const std::size_t fmax = (n - 1) / 2, fmid = n / 5;
        check_rule<T>("median", std::int64_t(fmid), {}, kind, n, d, seed++);
        check_rule<T>("trimmed-mean", 0, {}, kind, n, d, seed++);
        check_rule<T>("trimmed-mean", std::int64_t(fmid), {}, kind, n, d, seed++);
        check_rule<T>("trimmed-mean", std::int64_t(fmax), {}, kind, n, d, seed++);
        check_rule<T>("averaged-median", std::int64_t(fmid), {}, kind, n, d, seed++);
        check_rule<T>("averaged-median", std::int64_t(fmid), {{"beta", double(n / 3 + 1)}}, kind, n, d, seed++);
        check_rule<T>("averaged-median", std::int64_t(fmax), {}, kind, n, d, seed++);
      }
  // Bulyan's coordinate phases (theta selected rows through an index list;
  // bulyan-multikrum: wires that are means of row sets, upper median) with
  // theta in several size classes.
  for (std::size_t n : {std::size_t(26), std::size_t(45), std::size_t(70), std::size_t(90), std::size_t(133)})
    for (Kind kind : {Kind::kSeparated, Kind::kByzNan}) {
      check_rule<T>("bulyan", std::int64_t(n / 5), {}, kind, n, 1000, seed++);
      check_rule<T>("bulyan-multikrum", std::int64_t(n / 5), {}, kind, n, 1000, seed++);
    }
}

template <typename T>
void distance_rules() {
  std::uint64_t seed = 1000;
  for (const auto& s : sizes())
    for (std::size_t d : dims(s.n))
      for (Kind kind : {Kind::kSeparated, Kind::kByzNan, Kind::kByzInf, Kind::kByzBig})
        for (const char* rule : kDistRules) {
          if (std::string(rule) == "mda" && s.n > 30) continue;  // C(n, f) subsets
          check_rule<T>(rule, std::int64_t(s.f), {}, kind, s.n, d, seed++);
        }
  // Parameters: m for multi-krum and bulyan-multikrum.
  check_rule<T>("multi-krum", 4, {{"m", 1}}, Kind::kByzNan, 20, 4133, 11);
  check_rule<T>("multi-krum", 4, {{"m", 16}}, Kind::kByzInf, 20, 4133, 12);
  check_rule<T>("bulyan-multikrum", 4, {{"m", 10}}, Kind::kByzNan, 20, 4133, 13);
  check_rule<T>("bulyan-multikrum", 2, {}, Kind::kByzBig, 11, 20011, 14);
  // Large, nearly equal rows: the exact-distance choice.
  for (const char* rule : kDistRules) check_rule<T>(rule, 2, {}, Kind::kCancel, 11, 4133, 15);
  if (sizeof(T) == 4)
    for (const char* rule : kDistRules) check_rule<T>(rule, 2, {}, Kind::kHuge, 11, 4133, 16);
}

template <typename T>
void iterative_rules() {
  std::uint64_t seed = 5000;
  for (const auto& s : sizes())
    for (std::size_t d : dims(s.n))
      for (Kind kind : {Kind::kSeparated, Kind::kByzNan, Kind::kByzBig}) {
        check_rule<T>("geometric-median", std::int64_t(s.f), {}, kind, s.n, d, seed++);
        check_rule<T>("centered-clipping", std::int64_t(s.f), {}, kind, s.n, d, seed++);
      }
  check_rule<T>("centered-clipping", 4, {{"tau", 0.5}, {"L", 3}}, Kind::kByzNan, 20, 4133, 21, true);
  check_rule<T>("centered-clipping", 4, {{"tau", 100}, {"L", 2}}, Kind::kSeparated, 20, 4133, 22, true);
  check_rule<T>("geometric-median", 4, {{"max_iter", 3}, {"tol", 0}}, Kind::kByzBig, 20, 4133, 23);
  check_rule<T>("geometric-median", 0, {{"nu", 0.5}}, Kind::kSeparated, 7, 4133, 24);
}

template <typename T>
void pre_aggregators() {
  std::uint64_t seed = 9000;
  for (const auto& s : sizes())
    for (std::size_t d : dims(s.n))
      for (Kind kind : {Kind::kSeparated, Kind::kByzNan, Kind::kByzBig}) {
        check_pre<T>("nnm", std::int64_t(s.f), {}, kind, s.n, d, seed++);
        check_pre<T>("clipping", std::int64_t(s.f), {}, kind, s.n, d, seed++);
        check_pre<T>("clipping", std::int64_t(s.f), {{"tau", 3.0}}, kind, s.n, d, seed++);
        check_pre<T>("bucketing", std::int64_t(s.f), {{"s", 3}, {"seed", double(seed)}}, kind, s.n, d, seed++);
      }
}

// dnc, clipped-clustering, smea, caf, zeroing (rules_next.md): the selection
// runs on the host with the CPU's code (cpu/next_impl.h) on the GPU's distance
// matrix and row statistics; the GPU gathers DnC's sampled coordinates and
// combines the rows.
template <typename T>
void next_rules() {
  std::uint64_t seed = 12000;
  for (const auto& s : sizes()) {
    if (s.n > 64) continue;
    for (std::size_t d : dims(s.n))
      for (Kind kind : {Kind::kSeparated, Kind::kByzNan, Kind::kByzInf, Kind::kByzBig}) {
        const auto f = std::int64_t(s.f);
        // float32 with x1e6 rows in unrelated directions: DnC's projections
        // and the cosine distances of the honest rows are below the float32
        // distances' precision (~1e-7 of 1e12): genuine ties, decided
        // differently by the two backends' summation orders. Not compared.
        const bool ill = sizeof(T) == 4 && kind == Kind::kByzBig;
        // d = 1: every pair of rows is collinear, so every cosine distance is exactly 0 or 2 and
        // the linkage merges exact ties in an order that rounding decides (e.g. rows 2.44, 0.99,
        // 2.69: any two of them form "the largest cluster"). Not compared (the Python property
        // test accepts every tie outcome there: tests/reference.py tie_outputs).
        const bool collinear = d == 1;
        if (!ill) {
          check_rule<T>("dnc", f, {}, kind, s.n, d, seed++);
          check_rule<T>("dnc", f, {{"b", 29}, {"niters", 3}, {"seed", double(seed)}}, kind, s.n, d, seed++);
        }
        if (!ill && !collinear) {
          check_rule<T>("clipped-clustering", f, {}, kind, s.n, d, seed++);
          check_rule<T>("clipped-clustering", f, {{"linkage", 0, "single"}}, kind, s.n, d, seed++);
        } else if (!ill) {
          seed += 2;  // the cases after keep their data
        }
        if (s.n <= 20) check_rule<T>("smea", f, {}, kind, s.n, d, seed++);
        check_rule<T>("caf", f, {}, kind, s.n, d, seed++);
        check_rule<T>("zeroing", f, {{"tau", 4.0}}, kind, s.n, d, seed++);
        check_rule<T>("zeroing", f, {{"tau", 40.0}, {"norm_order", 1}, {"mode", 0, "drop"}}, kind, s.n, d, seed++);
        check_rule<T>("zeroing", f, {{"tau", 9.0}, {"norm_order", 2}}, kind, s.n, d, seed++);
        check_pre<T>("zeroing", f, {{"tau", 4.0}}, kind, s.n, d, seed++);
        check_pre<T>("zeroing", f, {{"tau", 9.0}, {"norm_order", 2}}, kind, s.n, d, seed++);
      }
  }
  for (const char* rule : {"dnc", "clipped-clustering", "smea", "caf"}) check_rule<T>(rule, 2, {}, Kind::kCancel, 11, 4133, 15);
  check_rule<T>("dnc", 4, {{"b", 3000}}, Kind::kByzNan, 20, 20011, 16);
}

#ifdef PYAGG_WITH_CUDA
template <typename T>
void distance_matrix_case(std::size_t n, std::size_t d, Kind kind, std::size_t f, std::uint64_t seed) {
  const auto x = make_data<T>(n, d, f, kind, seed);
  std::vector<const T*> rows(n);
  for (std::size_t i = 0; i < n; ++i) rows[i] = x.data() + i * d;
  std::vector<double> Dc(n * n), Dg(n * n, -1.0);
  cpu::pairwise_sqdist<T>(rows.data(), n, d, Dc.data());
  DevBuf dx(n * d * sizeof(T));
  CHECK(dx.p != nullptr);
  if (!dx.p) return;
  CHECK(copy_host_to_device(0, dx.p, x.data(), n * d * sizeof(T)).ok());
  GradView g;
  g.data = dx.p;
  g.n = n;
  g.d = d;
  g.dtype = dtype_of<T>();
  g.device = Device::kCuda;
  Status st = cuda::pairwise_sqdist(g, Dg.data());
  CHECK_MSG(st.ok(), st.message());
  if (!st.ok()) return;
  // float64: the CPU's exact difference form (n <= kGramMinN) agrees to ~1e-12; above it the CPU
  // runs the double Gram form, whose guard (exact fallback when D_ij < 2^-16 (G_ii + G_jj)) bounds
  // its error by about 2^16 eps relative (~1.5e-11): the GPU's difference form is the closer one.
  const double rtol = sizeof(T) == 4 ? 1e-5 : (n > kGramMinN ? 1e-10 : 1e-12);
  int bad = 0;
  for (std::size_t q = 0; q < n * n; ++q) {
    const double a = Dc[q], b = Dg[q];
    const bool ok = (std::isinf(a) && std::isinf(b) && (a > 0) == (b > 0)) ||
                    (std::isfinite(a) && std::isfinite(b) && std::fabs(a - b) <= rtol * std::max(std::fabs(a), 1e-300));
    if (!ok && bad++ < 3)
      std::printf("  D[%zu][%zu] cpu %.17g gpu %.17g (%s n=%zu d=%zu %s)\n", q / n, q % n, a, b, tname<T>(), n, d,
                  kind_name(kind));
  }
  CHECK(bad == 0);
  ++stats().matrices;
}
#endif

}  // namespace

TEST_CASE("distance matrix: GPU vs CPU (float32, float64; NaN/inf rows, cancellation, huge)") {
#ifdef PYAGG_WITH_CUDA
  std::uint64_t seed = 300;
  for (const auto& s : sizes())
    for (std::size_t d : dims(s.n))
      for (Kind kind : {Kind::kSeparated, Kind::kByzNan, Kind::kByzInf, Kind::kCancel}) {
        distance_matrix_case<float>(s.n, d, kind, s.f, seed++);
        distance_matrix_case<double>(s.n, d, kind, s.f, seed++);
      }
  distance_matrix_case<float>(11, 4133, Kind::kHuge, 2, 301);
  distance_matrix_case<float>(203, 517, Kind::kByzNan, 40, 302);  // > 512 pair tiles: several tile groups
  distance_matrix_case<double>(203, 517, Kind::kByzInf, 40, 303);
#endif
}

TEST_CASE("coordinate-wise rules float32") { coordinate_rules<float>(); }
TEST_CASE("coordinate-wise rules float64") { coordinate_rules<double>(); }
TEST_CASE("distance-based rules float32") { distance_rules<float>(); }
TEST_CASE("distance-based rules float64") { distance_rules<double>(); }
TEST_CASE("iterative rules float32") { iterative_rules<float>(); }
TEST_CASE("iterative rules float64") { iterative_rules<double>(); }
TEST_CASE("pre-aggregators float32") { pre_aggregators<float>(); }
TEST_CASE("pre-aggregators float64") { pre_aggregators<double>(); }
TEST_CASE("dnc, clipped-clustering, smea, caf, zeroing float32") { next_rules<float>(); }
TEST_CASE("dnc, clipped-clustering, smea, caf, zeroing float64") { next_rules<double>(); }

TEST_CASE("CUDA input errors are Status, not crashes") {
  RuleConfig cfg;
  CHECK(make_rule("median", 0, {}, &cfg).ok());
  std::vector<float> host(3 * 5, 1.0f), out(5);
  GradView g;
  g.data = host.data();
  g.n = 3;
  g.d = 5;
  g.device = Device::kCuda;
  // Host memory handed to the CUDA backend (not meaningful in the CPU emulator).
  if (!env_flag("PYAGG_EMU")) {
    Status st = aggregate(cfg, g, out.data());
    CHECK_MSG(!st.ok() && contains(st.message(), "host memory"), st.message());
  }
  // A device that does not exist.
  int count = 0;
  CHECK(cuda_device_count(&count).ok());
  DevBuf dx(3 * 5 * sizeof(float)), dout(5 * sizeof(float));
  GradView gd = g;
  gd.data = dx.p;
  gd.device_id = count + 3;
  Status st = aggregate(cfg, gd, dout.p);
  CHECK_MSG(!st.ok() && contains(st.message(), "does not exist"), st.message());
  void* p = nullptr;
  st = device_malloc(count + 3, 16, &p);
  CHECK_MSG(!st.ok() && p == nullptr, st.message());
  // Row pointers are a CPU-only form.
  const void* rows[3] = {dx.p, dx.p, dx.p};
  GradView gr = g;
  gr.data = nullptr;
  gr.rows = rows;
  st = aggregate(cfg, gr, dout.p);
  CHECK_MSG(!st.ok() && st.code() == StatusCode::kInvalidArgument, st.message());
  // The device still works after these errors.
  gd.device_id = 0;
  CHECK(copy_host_to_device(0, dx.p, host.data(), host.size() * sizeof(float)).ok());
  st = aggregate(cfg, gd, dout.p);
  CHECK_MSG(st.ok(), st.message());
}

int main() {
  g_verbose = env_flag("PYAGG_TEST_VERBOSE");
  g_large = env_flag("PYAGG_TEST_CUDA_LARGE");
  const bool required = env_flag("PYAGG_TEST_GPU");
  int count = 0;
  Status st = cuda_device_count(&count);
  if (!st.ok()) {
    // Asking for CUDA must fail cleanly, and the CPU must be unaffected.
    int failures = 0;
    RuleConfig cfg;
    (void)make_rule("average", 0, {}, &cfg);
    std::vector<float> x = {1, 2, 3, 5, 7, 9}, out(3, 0.0f);
    GradView g;
    g.data = x.data();
    g.n = 2;
    g.d = 3;
    g.device = Device::kCuda;
    Status s = aggregate(cfg, g, out.data());
    if (s.ok() || (s.code() != StatusCode::kDeviceError && s.code() != StatusCode::kUnsupported)) {
      std::printf("FAIL: aggregate(device=cuda) without a device returned '%s' (code %d)\n", s.message().c_str(),
                  s.code_int());
      ++failures;
    }
    void* p = reinterpret_cast<void*>(1);
    s = device_malloc(0, 64, &p);
    if (s.ok() || p != nullptr) {
      std::printf("FAIL: device_malloc without a device: '%s'\n", s.message().c_str());
      ++failures;
    }
    g.device = Device::kCpu;
    s = aggregate(cfg, g, out.data());
    if (!s.ok() || out[0] != 3.0f || out[1] != 4.5f || out[2] != 6.0f) {
      std::printf("FAIL: CPU aggregate after a failed CUDA request: '%s'\n", s.message().c_str());
      ++failures;
    }
    if (required) {
      std::printf("FAIL: PYAGG_TEST_GPU=1 but no usable CUDA device (%s)\n", st.message().c_str());
      return 1;
    }
    std::printf("SKIP: no CUDA device (%s)\n", st.message().c_str());
    return failures == 0 ? 0 : 1;
  }
  std::printf("CUDA devices: %d\n", count);
  const int rc = check::run_all();
  std::printf("compared %d results: %d bitwise identical, %d within tolerance (not bitwise); %d distance matrices\n",
              stats().cases, stats().bitwise, stats().tolerance, stats().matrices);
  return rc;
}
