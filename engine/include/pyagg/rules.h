// pyagg engine — the public API of the gradient aggregation rules (GARs).
//
// Every front end (Cython module, TF op, native benchmarks, LossyMPI server)
// goes through these functions, so every front end gets the same validation
// and the same messages. Exact rule definitions: shared/spec/rules.md.
//
// Usage:
//   RuleConfig cfg;
//   Status st = make_rule("krum", /*f=*/4, {}, &cfg);      // parse + params
//   st = aggregate(cfg, view, out, /*state=*/nullptr);        // validate + run
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pyagg/status.h"
#include "pyagg/types.h"

namespace pyagg {

enum class RuleId : int {
  kAverage = 0,
  kAverageNan,
  kMedian,
  kTrimmedMean,
  kAveragedMedian,
  kKrum,
  kMultiKrum,
  kBulyan,
  kBulyanMultiKrum,
  kGeometricMedian,
  kCenteredClipping,
  kMda,
  kDnc,
  kClippedClustering,
  kSmea,
  kCaf,
  kZeroing,
};

enum class PreId : int { kNnm = 0, kBucketing, kClipping, kZeroing };

// One tunable parameter of a rule or pre-aggregator.
struct ParamSpec {
  const char* name;
  double default_value;   // NaN: derived from n and f at run time (see `doc`)
  bool integer;           // must be an integer value
  const char* doc;
  // Named choices "a|b|c": the value is the index of the choice (given as its
  // name through NamedParam::text, or as the index). nullptr: a number.
  const char* choices = nullptr;
  bool allow_inf = false;  // +inf is an admissible value
  bool required = false;   // no default: make_rule refuses a config without it
  // Admissible range (checked at the engine's door, from this table alone):
  // value >= lo, or value > lo when lo_open. `range` is how messages and docs
  // state it when ">= lo" / "> lo" says too little (e.g. "an integer >= 1").
  double lo = -std::numeric_limits<double>::infinity();
  bool lo_open = false;
  const char* range = nullptr;
};

struct RuleInfo {
  RuleId id;
  const char* name;
  const char* bound;                   // human readable, e.g. "n >= 2f+3"
  std::size_t (*min_n)(std::size_t f); // smallest admissible n for this f
  bool robust;                         // false only for `average`
  const char* paper;
  const char* summary;
  std::vector<ParamSpec> params;
};

struct PreInfo {
  PreId id;
  const char* name;
  const char* paper;
  const char* summary;
  std::vector<ParamSpec> params;
};

const std::vector<RuleInfo>& rule_table();
const std::vector<PreInfo>& pre_table();
// Comma separated list of the known rule (pre-aggregator) names, for messages.
std::string known_rule_names();
std::string known_pre_names();

struct NamedParam {
  std::string name;
  double value;
  // Optional text form of the value: the name of a choice ("single"), or an
  // integer too large for a double to hold exactly (a 64-bit seed). When set,
  // it is what the engine reads.
  std::string text;
};

// clipped-clustering's norm history (norm_history = all): the L2 norms of the
// usable rows of every earlier call made with the same RuleConfig (i.e. the
// same Aggregator). Shared by the copies of one config; guarded by `mu`.
struct NormHistory {
  std::mutex mu;
  std::vector<double> norms;
};

enum class Linkage : int { kAverage = 0, kSingle = 1 };
enum class ZeroMode : int { kZero = 0, kDrop = 1 };

// A parsed, parameter-checked rule. Fields left at their "unset" value are
// derived from (n, f) when the rule runs (e.g. m = n-f-2).
struct RuleConfig {
  RuleId rule = RuleId::kAverage;
  std::size_t f = 0;
  // multi-krum, bulyan-multikrum: number of rows averaged (0 = default n-f-2)
  std::int64_t m = 0;
  // averaged-median: number of values averaged around the median (0 = n-f)
  std::int64_t beta = 0;
  // geometric-median
  double nu = 1e-6;
  std::int64_t max_iter = 100;
  double tol = 1e-7;
  int gm_init = 0;  // 0: mean of the finite rows (default, coefficient space), 1: coordinate-wise median
  // centered-clipping
  double tau = 10.0;
  std::int64_t iters = 1;  // "L" in the spec
  // mda: refuse when C(n, f) exceeds this many subsets
  double max_subsets = 1e7;   // smea: 1e6 (set by make_rule)
  // dnc, caf: the seeded start vector; dnc: coordinate subsets
  std::uint64_t seed = 0;
  std::int64_t power_iters = 100;
  // dnc
  std::int64_t niters = 5;
  std::int64_t sub_dim = 10000;  // "b"
  double filter_frac = 1.0;      // "c"
  // clipped-clustering
  double max_tau = std::numeric_limits<double>::infinity();
  Linkage linkage = Linkage::kAverage;
  std::shared_ptr<NormHistory> history;  // non-null iff norm_history = all
  // zeroing (rule and pre-aggregator)
  double zero_tau = std::numeric_limits<double>::quiet_NaN();  // required
  int norm_order = 0;  // 0 = inf, 1, 2
  ZeroMode zero_mode = ZeroMode::kZero;
};

struct PreConfig {
  PreId pre = PreId::kNnm;
  std::size_t f = 0;
  std::int64_t bucket_size = 2;  // bucketing: s
  std::uint64_t seed = 0;        // bucketing: shuffle seed (splitmix64 stream)
  double tau = 0.0;              // clipping: static threshold; 0 = adaptive (ARC); zeroing: threshold
  int norm_order = 0;            // zeroing: 0 = inf, 1, 2
};

// Parse a rule name and its parameters; validates everything that does not
// depend on n or d (names, ranges). Unknown names list the known ones.
Status make_rule(const std::string& name, std::int64_t f,
                 const std::vector<NamedParam>& params, RuleConfig* out);
Status make_pre(const std::string& name, std::int64_t f,
                const std::vector<NamedParam>& params, PreConfig* out);

// Checks that depend on the input size: n against the rule's bound, d > 0,
// parameters derived from n (m, beta), size overflow. Called by aggregate();
// exposed so front ends (TF op constructor, transport) can check early.
Status check_rule_input(const RuleConfig& cfg, std::size_t n, std::size_t d);
Status check_pre_input(const PreConfig& cfg, std::size_t n, std::size_t d);

// Number of rows a pre-aggregator outputs for n input rows.
std::size_t pre_output_rows(const PreConfig& cfg, std::size_t n);

// Aggregate the n gradients of `g` into `out` (d elements, g.dtype, on
// g.device). `state` is centered-clipping's starting point v (d elements,
// same dtype/device; nullptr = zeros); other rules ignore it.
// The single dispatch point: validates once, then runs the CPU (OpenMP) or
// the CUDA backend according to g.device.
Status aggregate(const RuleConfig& cfg, const GradView& g, void* out,
                 const void* state = nullptr);

// Apply a pre-aggregator: writes pre_output_rows(cfg, n) rows of d elements,
// row-major, into `out` (same dtype/device as g).
Status preaggregate(const PreConfig& cfg, const GradView& g, void* out);

// A chain: pres[0] applied to g, pres[1] to its output, ..., then the rule.
// Validates every step's input size at the door, then computes the result of
// preaggregate() into buffers followed by aggregate(), except that the last
// pre-aggregator is fused with the rule where chain_fusable() says so and its
// output has at least 2^18 elements (n' * d; smaller ones stay in cache when
// written, and are): its n' x d output is then never written (engine/src/cpu/chain.cpp). Fused
// results: nnm, bucketing, clipping or zeroing before a coordinate-wise rule (average,
// average-nan, median, trimmed-mean, averaged-median): the same bits as the
// unfused chain; nnm before krum, multi-krum, mda or bulyan: the rule's
// distances come from nnm's distance matrix in double (the unfused chain
// computes them from nnm's output rounded to the dtype), so the selection
// can differ between rows whose scores differ by less than that rounding;
// the same selection gives the same bits. CPU only: a CUDA view is refused
// (Unsupported; run preaggregate() and aggregate() in turn there).
Status aggregate_chain(const RuleConfig& cfg, const std::vector<PreConfig>& pres, const GradView& g, void* out,
                       const void* state = nullptr);
// Whether aggregate_chain() fuses pre-aggregator p (the last of the chain)
// with rule r.
bool chain_fusable(PreId p, RuleId r);

// A rule's state kept across calls besides centered-clipping's momentum:
// clipped-clustering's norm history (norm_history = all). `has` is false for
// every other rule (and for norm_history = call). Used to checkpoint an
// Aggregator and to restore it (set_rule_history replaces the history).
bool rule_history(const RuleConfig& cfg, std::vector<double>* norms);
Status set_rule_history(const RuleConfig& cfg, const std::vector<double>& norms);

// Build facts, for pyagg.build_info().
struct BuildInfo {
  const char* version;
  bool openmp;
  int max_threads;
  bool cuda;
  const char* cuda_archs;
  const char* compiler;
  const char* build_type;
  bool native_arch;
  const char* cpu_isas;  // ISA levels of the CPU kernels compiled in, lowest first ("base avx2 avx512")
  const char* cpu_isa;   // the level in use in this process (best supported, or PYAGG_CPU_ISA)
};
BuildInfo build_info();

// CUDA availability at run time: Ok with the device count, or the reason why
// not ("not compiled in", "no device").
Status cuda_device_count(int* count);

}  // namespace pyagg
