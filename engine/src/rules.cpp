// pyagg engine — rule registry, input validation, and the single dispatch point.
//
// Everything a front end can get wrong is checked here, once, before any
// unsigned arithmetic or any kernel runs; the backends assume valid input.
#include "pyagg/rules.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>
#include <sstream>

#include "cpu/cpu_backend.h"
#include "cpu_dispatch.h"
#include "pyagg/config.h"
#ifdef PYAGG_WITH_CUDA
#include "../cuda/cuda_backend.h"
#endif

namespace pyagg {
namespace {

constexpr double kUnset = std::numeric_limits<double>::quiet_NaN();

std::size_t bound_1(std::size_t) { return 1; }
std::size_t bound_2f1(std::size_t f) { return 2 * f + 1; }
std::size_t bound_2f3(std::size_t f) { return 2 * f + 3; }
std::size_t bound_4f3(std::size_t f) { return 4 * f + 3; }

// log C(n, k), for the MDA subset limit.
double log_binomial(std::size_t n, std::size_t k) {
  return std::lgamma(double(n) + 1) - std::lgamma(double(k) + 1) - std::lgamma(double(n - k) + 1);
}

template <typename Info>
const Info* find_by_name(const std::vector<Info>& table, const std::string& name) {
  for (const auto& info : table)
    if (name == info.name) return &info;
  return nullptr;
}

std::string param_names(const std::vector<ParamSpec>& params) {
  if (params.empty()) return "none";
  std::string s;
  for (const auto& p : params) {
    if (!s.empty()) s += ", ";
    s += p.name;
  }
  return s;
}

std::string fmt(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// Checks a parameter value against its spec (finite, integer when required).
Status check_param_value(const char* owner, const ParamSpec& spec, double v) {
  if (spec.allow_inf && v == std::numeric_limits<double>::infinity()) return Status::Ok();
  if (!std::isfinite(v))
    return Status::Invalid(std::string(owner) + ": parameter " + spec.name + " must be finite, got " + fmt(v));
  if (spec.integer && (v != std::floor(v) || std::fabs(v) > 9.0e15))
    return Status::Invalid(std::string(owner) + ": parameter " + spec.name + " must be an integer, got " + fmt(v));
  return Status::Ok();
}

// Table helpers: a number parameter with its admissible range (lo, open), or a
// named-choice / seed parameter (ranges do not apply).
ParamSpec num(const char* name, double def, bool integer, const char* doc, double lo, bool open,
              const char* range = nullptr, bool allow_inf = false, bool required = false) {
  ParamSpec p{name, def, integer, doc, nullptr, allow_inf, required};
  p.lo = lo;
  p.lo_open = open;
  p.range = range;
  return p;
}
ParamSpec choice(const char* name, const char* doc, const char* choices) { return {name, 0, true, doc, choices}; }
ParamSpec seed(const char* doc) { return {"seed", 0, true, doc}; }
constexpr bool kOpen = true, kClosed = false;

// value within the spec's range, else "<owner>: <name> must be <range>, got <name>=<value>"
Status check_param_range(const char* owner, const ParamSpec& spec, double v) {
  if (spec.choices) return Status::Ok();
  const bool ok = spec.lo_open ? v > spec.lo : v >= spec.lo;
  if (ok) return Status::Ok();
  const std::string range = spec.range ? spec.range : std::string(spec.lo_open ? "> " : ">= ") + fmt(spec.lo);
  return Status::Invalid(std::string(owner) + ": " + spec.name + " must be " + range + ", got " + spec.name + "=" +
                         fmt(v));
}

std::vector<std::string> split_choices(const char* choices) {
  std::vector<std::string> out(1);
  for (const char* c = choices; *c; ++c) {
    if (*c == '|')
      out.emplace_back();
    else
      out.back() += *c;
  }
  return out;
}

// The value of one parameter: a choice -> its index; a seed -> also the exact
// 64-bit integer (*u), from its text when given (doubles hold 53 bits).
Status param_value(const char* owner, const ParamSpec& spec, const NamedParam& p, double* v, std::uint64_t* u) {
  const std::string who = std::string(owner) + ": parameter " + spec.name;
  if (spec.choices) {
    const auto ch = split_choices(spec.choices);
    std::string all;
    for (const auto& c : ch) all += (all.empty() ? "" : ", ") + c;
    if (!p.text.empty()) {
      for (std::size_t i = 0; i < ch.size(); ++i)
        if (p.text == ch[i]) {
          *v = double(i);
          return Status::Ok();
        }
      return Status::Invalid(who + " must be one of " + all + ", got '" + p.text + "'");
    }
    // A number naming the choice itself (norm_order=2), else an index.
    for (std::size_t i = 0; i < ch.size(); ++i)
      if (fmt(p.value) == ch[i]) {
        *v = double(i);
        return Status::Ok();
      }
    return Status::Invalid(who + " must be one of " + all + ", got " + fmt(p.value));
  }
  const bool is_seed = std::string(spec.name) == "seed";
  double x = p.value;
  if (!p.text.empty()) {
    const char* s = p.text.c_str();
    if (is_seed) {
      char* end = nullptr;
      errno = 0;
      const unsigned long long w = std::strtoull(s, &end, 10);
      if (p.text[0] == '-' || p.text[0] == '+' || end != s + p.text.size() || errno == ERANGE)
        return Status::Invalid(who + " must be an integer in [0, 2^64-1], got '" + p.text + "'");
      *u = w;
      *v = double(w);
      return Status::Ok();
    }
    // A number given as text (the TF op passes exact decimal integers as text): parsed whole.
    char* end = nullptr;
    errno = 0;
    const double t = std::strtod(s, &end);
    if (end != s + p.text.size() || errno == ERANGE || std::isnan(t))
      return Status::Invalid(who + " must be a real number, got '" + p.text + "'");
    x = t;
  }
  if (is_seed) {
    if (!(x >= 0 && x < 18446744073709551616.0 && x == std::floor(x)))
      return Status::Invalid(who + " must be an integer in [0, 2^64-1], got " + fmt(x));
    *u = static_cast<std::uint64_t>(x);
    *v = x;
    return Status::Ok();
  }
  PYAGG_RETURN_IF_ERROR(check_param_value(owner, spec, x));
  PYAGG_RETURN_IF_ERROR(check_param_range(owner, spec, x));
  *v = x;
  return Status::Ok();
}

// Applies named params: unknown names and duplicates are errors.
template <typename Setter>
Status apply_params(const char* owner, const std::vector<ParamSpec>& specs,
                    const std::vector<NamedParam>& params, Setter set) {
  for (std::size_t i = 0; i < params.size(); ++i) {
    const NamedParam& p = params[i];
    const ParamSpec* spec = nullptr;
    for (const auto& s : specs)
      if (p.name == s.name) spec = &s;
    if (!spec)
      return Status::Invalid(std::string(owner) + " has no parameter '" + p.name +
                             "' (its parameters: " + param_names(specs) + ")");
    for (std::size_t j = 0; j < i; ++j)
      if (params[j].name == p.name)
        return Status::Invalid(std::string(owner) + ": parameter " + p.name + " given twice");
    double v = 0;
    std::uint64_t u = 0;
    PYAGG_RETURN_IF_ERROR(param_value(owner, *spec, p, &v, &u));
    PYAGG_RETURN_IF_ERROR(set(p.name, v, u));
  }
  return Status::Ok();
}

bool given(const std::vector<NamedParam>& params, const char* name) {
  for (const auto& p : params)
    if (p.name == name) return true;
  return false;
}

}  // namespace

const std::vector<RuleInfo>& rule_table() {
  static const std::vector<RuleInfo> table = {
      {RuleId::kAverage, "average", "n >= 1", bound_1, false, "(baseline, not robust)",
       "mean of the n rows", {}},
      {RuleId::kAverageNan, "average-nan", "n >= 1", bound_1, true, "(baseline for lossy links)",
       "per coordinate, mean of the finite values; none -> 0", {}},
      {RuleId::kMedian, "median", "n >= 1", bound_1, true,
       "Yin et al., Byzantine-Robust Distributed Learning, ICML 2018",
       "per coordinate, median of the finite values; none -> 0", {}},
      {RuleId::kTrimmedMean, "trimmed-mean", "n >= 2f+1", bound_2f1, true,
       "Yin et al., Byzantine-Robust Distributed Learning, ICML 2018",
       "per coordinate, drop the f largest and f smallest values, average the rest", {}},
      {RuleId::kAveragedMedian, "averaged-median", "n >= 2f+1", bound_2f1, true,
       "Xie et al., Generalized Byzantine-tolerant SGD, 2018 (mean around median)",
       "per coordinate, mean of the beta values closest to the median",
       {num("beta", kUnset, true, "values averaged per coordinate, 1 <= beta <= n-f (default n-f)", 1, kClosed)}},
      {RuleId::kKrum, "krum", "n >= 2f+3", bound_2f3, true,
       "Blanchard et al., Machine Learning with Adversaries, NeurIPS 2017",
       "the row with the lowest sum of squared distances to its n-f-2 nearest rows", {}},
      {RuleId::kMultiKrum, "multi-krum", "n >= 2f+3", bound_2f3, true,
       "Damaskinos et al., AggregaThor, SysML 2019",
       "mean of the m rows with the lowest Krum scores",
       {num("m", kUnset, true, "rows averaged, 1 <= m <= n-f (default n-f-2)", 1, kClosed)}},
      {RuleId::kBulyan, "bulyan", "n >= 4f+3", bound_4f3, true,
       "El Mhamdi et al., The Hidden Vulnerability of Distributed Learning in Byzantium, ICML 2018",
       "n-2f Krum selections, then per coordinate the mean of the n-4f values closest to the median",
       {}},
      {RuleId::kBulyanMultiKrum, "bulyan-multikrum", "n >= 4f+3", bound_4f3, true,
       "Damaskinos et al., AggregaThor, SysML 2019 (Bulyan over Multi-Krum)",
       "n-2f-2 Multi-Krum selections, then Bulyan's coordinate phase",
       {num("m", kUnset, true, "rows averaged in the first round, n-2f-2 <= m <= n-f-2 (default n-f-2)", 1, kClosed)}},
      {RuleId::kGeometricMedian, "geometric-median", "n >= 1", bound_1, true,
       "Pillutla et al., Robust Aggregation for Federated Learning (RFA), IEEE TSP 2022",
       "smoothed Weiszfeld iterations from the mean of the finite rows (init=median: the coordinate-wise median)",
       {num("nu", 1e-6, false, "smoothing: weights are 1/max(nu, distance), nu > 0", 0, kOpen),
        num("max_iter", 100, true, "maximum number of iterations, >= 1", 1, kClosed),
        num("tol", 1e-7, false, "stop when the relative change is below tol, tol >= 0", 0, kClosed),
        choice("init", "start: mean of the finite rows (RFA) or the coordinate-wise median", "mean|median")}},
      {RuleId::kCenteredClipping, "centered-clipping", "n >= 1", bound_1, true,
       "Karimireddy et al., Learning from History for Byzantine Robust Optimization, ICML 2021",
       "v <- v + mean_i clip(x_i - v, tau), L times, v starting at the previous output",
       {num("tau", 10.0, false, "clipping radius, tau > 0", 0, kOpen),
        num("L", 1, true, "number of clipping iterations, >= 1", 1, kClosed)}},
      {RuleId::kMda, "mda", "n >= 2f+1", bound_2f1, true,
       "El Mhamdi et al., Fast and Robust Distributed Learning in High Dimension, SRDS 2020",
       "mean of the n-f rows forming the subset of smallest diameter (exact)",
       {num("max_subsets", 1e7, false, "refuse when C(n, f) exceeds this, >= 1 (default 1e7)", 1, kClosed)}},
      {RuleId::kDnc, "dnc", "n >= 2f+1 and floor(c*f) <= n-1", bound_2f1, true,
       "Shejwalkar & Houmansadr, Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses "
       "for Federated Learning (Divide-and-Conquer), NDSS 2021",
       "niters times: project the centered rows (on b sampled coordinates) on their top singular direction, keep "
       "the n-floor(c*f) lowest squared projections; mean of the intersection of the kept sets",
       {num("niters", 5, true, "iterations, >= 1", 1, kClosed, "an integer >= 1"),
        num("b", 10000, true, "coordinates sampled per iteration (all when b >= d), >= 1", 1, kClosed, "an integer >= 1"),
        num("c", 1.0, false, "filtering fraction: floor(c*f) rows removed per iteration, finite, >= 0", 0, kClosed,
            "finite and >= 0"),
        seed("splitmix64 seed of the start vector and the coordinate subsets, 0 .. 2^64-1"),
        num("power_iters", 100, true, "power-method steps on the n x n Gram matrix, >= 1", 1, kClosed, "an integer >= 1")}},
      {RuleId::kClippedClustering, "clipped-clustering", "n >= 2f+1", bound_2f1, true,
       "Li, Ngai & Voigt, An Experimental Study of Byzantine-Robust Aggregation Schemes in Federated "
       "Learning, IEEE TBD 2023 (blades Clippedclustering)",
       "clip to the median norm, 2-way agglomerative clustering on cosine distance, mean of the larger cluster",
       {choice("norm_history", "all: the median over every norm this Aggregator saw; call: this call's norms",
               "all|call"),
        num("max_tau", std::numeric_limits<double>::infinity(), false, "cap on the clipping norm, > 0 (inf allowed)", 0,
            kOpen, nullptr, true),
        choice("linkage", "cluster linkage", "average|single")}},
      {RuleId::kSmea, "smea", "n >= 2f+1", bound_2f1, true,
       "Allouah, Guerraoui, Gupta, Pinot & Stephan, On the Privacy-Robustness-Utility Trilemma in Distributed "
       "Learning (SMEA), ICML 2023",
       "mean of the n-f rows whose covariance has the smallest largest eigenvalue (exact, over all C(n, f) subsets)",
       {num("max_subsets", 1e6, false, "refuse when C(n, f) exceeds this, >= 1 (default 1e6)", 1, kClosed)}},
      {RuleId::kCaf, "caf", "n >= 2f+1", bound_2f1, true,
       "Allouah, Guerraoui & Stephan, Towards Trustworthy Federated Learning with Untrusted Participants "
       "(CAF, Algorithm 2), ICML 2025",
       "down-weight rows along the top eigenvector of the weighted covariance until 2f weight is removed; the "
       "weighted mean of the step with the smallest top eigenvalue",
       {num("power_iters", 100, true, "power-method steps on the n x n Gram matrix, >= 1", 1, kClosed, "an integer >= 1"),
        seed("splitmix64 seed of the start vector, 0 .. 2^64-1")}},
      {RuleId::kZeroing, "zeroing", "n >= 1", bound_1, true,
       "TensorFlow Federated, tff.aggregators.zeroing_factory",
       "rows with norm > tau become zero rows; mode zero: sum of the kept rows / n, mode drop: their mean",
       {num("tau", kUnset, false, "zeroing threshold, required, >= 0 (inf allowed)", 0, kClosed, nullptr, true, true),
        choice("norm_order", "the norm: inf, 1 or 2", "inf|1|2"),
        choice("mode", "zero: a zeroed row keeps its weight (TFF MeanFactory); drop: mean of the kept rows",
               "zero|drop")}},
  };
  return table;
}

const std::vector<PreInfo>& pre_table() {
  static const std::vector<PreInfo> table = {
      {PreId::kNnm, "nnm", "Allouah et al., Fixing by Mixing, AISTATS 2023",
       "replace each row by the mean of its n-f nearest rows (itself included)", {}},
      {PreId::kBucketing, "bucketing",
       "Karimireddy et al., Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing, ICLR 2022",
       "shuffle the rows (seeded), average them in buckets of s",
       {num("s", 2, true, "bucket size, >= 1", 1, kClosed),
        seed("shuffle seed, >= 0 (splitmix64 + Fisher-Yates)")}},
      {PreId::kClipping, "clipping",
       "Allouah et al., Boosting Robustness by Clipping Gradients in Distributed Learning (ARC), 2024",
       "static (tau > 0) or adaptive (tau = 0, ARC) norm clipping of each row",
       {num("tau", 0.0, false, "static clipping radius; 0 = adaptive robust clipping (ARC)", 0, kClosed,
            ">= 0 (0 = adaptive)")}},
      {PreId::kZeroing, "zeroing", "TensorFlow Federated, tff.aggregators.zeroing_factory",
       "a row with norm > tau (unusable rows included) becomes a zero row; the others are copied",
       {num("tau", kUnset, false, "zeroing threshold, required, >= 0 (inf allowed)", 0, kClosed, nullptr, true, true),
        choice("norm_order", "the norm: inf, 1 or 2", "inf|1|2")}},
  };
  return table;
}

std::string known_rule_names() {
  std::string s;
  for (const auto& r : rule_table()) s += (s.empty() ? "" : ", ") + std::string(r.name);
  return s;
}

std::string known_pre_names() {
  std::string s;
  for (const auto& r : pre_table()) s += (s.empty() ? "" : ", ") + std::string(r.name);
  return s;
}

Status make_rule(const std::string& name, std::int64_t f, const std::vector<NamedParam>& params,
                 RuleConfig* out) {
  if (!out) return Status::Invalid("make_rule: null output");
  const RuleInfo* info = find_by_name(rule_table(), name);
  if (!info) return Status::Invalid("unknown rule '" + name + "' (known rules: " + known_rule_names() + ")");
  if (f < 0) return Status::Invalid(name + ": f must be >= 0, got f=" + std::to_string(f));
  RuleConfig cfg;
  cfg.rule = info->id;
  cfg.f = static_cast<std::size_t>(f);
  const RuleId id = info->id;
  if (id == RuleId::kSmea) cfg.max_subsets = 1e6;
  bool history_all = id == RuleId::kClippedClustering;
  // Ranges were checked against the table (ParamSpec::lo): the setter only stores.
  PYAGG_RETURN_IF_ERROR(apply_params(info->name, info->params, params,
                                     [&](const std::string& p, double v, std::uint64_t u) -> Status {
    const auto i64 = [v] { return static_cast<std::int64_t>(v); };
    if (p == "m") cfg.m = i64();
    else if (p == "beta") cfg.beta = i64();
    else if (p == "nu") cfg.nu = v;
    else if (p == "max_iter") cfg.max_iter = i64();
    else if (p == "tol") cfg.tol = v;
    else if (p == "tau" && id == RuleId::kZeroing) cfg.zero_tau = v;
    else if (p == "tau") cfg.tau = v;
    else if (p == "L") cfg.iters = i64();
    else if (p == "max_subsets") cfg.max_subsets = v;
    else if (p == "seed") cfg.seed = u;
    else if (p == "niters") cfg.niters = i64();
    else if (p == "b") cfg.sub_dim = i64();
    else if (p == "power_iters") cfg.power_iters = i64();
    else if (p == "c") cfg.filter_frac = v;
    else if (p == "max_tau") cfg.max_tau = v;
    else if (p == "init") cfg.gm_init = v == 0 ? 0 : 1;
    else if (p == "linkage") cfg.linkage = v == 0 ? Linkage::kAverage : Linkage::kSingle;
    else if (p == "norm_history") history_all = v == 0;
    else if (p == "norm_order") cfg.norm_order = v == 0 ? 0 : v == 1 ? 1 : 2;
    else if (p == "mode") cfg.zero_mode = v == 0 ? ZeroMode::kZero : ZeroMode::kDrop;
    else return Status::Internal("unhandled parameter " + p);
    return Status::Ok();
  }));
  for (const auto& spec : info->params)
    if (spec.required && !given(params, spec.name))
      return Status::Invalid(name + ": parameter " + spec.name + " is required (" + spec.doc + ")");
  if (id == RuleId::kClippedClustering && history_all) cfg.history = std::make_shared<NormHistory>();
  *out = cfg;
  return Status::Ok();
}

Status make_pre(const std::string& name, std::int64_t f, const std::vector<NamedParam>& params,
                PreConfig* out) {
  if (!out) return Status::Invalid("make_pre: null output");
  const PreInfo* info = find_by_name(pre_table(), name);
  if (!info)
    return Status::Invalid("unknown pre-aggregator '" + name + "' (known: " + known_pre_names() + ")");
  if (f < 0) return Status::Invalid(name + ": f must be >= 0, got f=" + std::to_string(f));
  PreConfig cfg;
  cfg.pre = info->id;
  cfg.f = static_cast<std::size_t>(f);
  PYAGG_RETURN_IF_ERROR(apply_params(info->name, info->params, params,
                                     [&](const std::string& p, double v, std::uint64_t u) -> Status {
    if (p == "s") cfg.bucket_size = static_cast<std::int64_t>(v);
    else if (p == "seed") cfg.seed = u;
    else if (p == "tau") cfg.tau = v;
    else if (p == "norm_order") cfg.norm_order = v == 0 ? 0 : v == 1 ? 1 : 2;
    else return Status::Internal("unhandled parameter " + p);
    return Status::Ok();
  }));
  for (const auto& spec : info->params)
    if (spec.required && !given(params, spec.name))
      return Status::Invalid(name + ": parameter " + spec.name + " is required (" + spec.doc + ")");
  *out = cfg;
  return Status::Ok();
}

namespace {

const RuleInfo& info_of(RuleId id) { return rule_table()[static_cast<int>(id)]; }

Status check_size(const char* owner, std::size_t n, std::size_t d) {
  if (d == 0) return Status::Invalid(std::string(owner) + " needs d >= 1 coordinates, got d=0");
  if (n == 0) return Status::Invalid(std::string(owner) + " needs at least one gradient, got n=0");
  // n*d*8 must fit in size_t (and in a signed 64-bit index for the kernels).
  if (n > (std::size_t(1) << 62) / 8 / d)
    return Status::Invalid(std::string(owner) + ": n*d too large (n=" + std::to_string(n) +
                           ", d=" + std::to_string(d) + ")");
  return Status::Ok();
}

// Resolves m and beta for (n, f); assumes the bound holds.
Status resolve(const RuleConfig& cfg, std::size_t n, RuleConfig* r) {
  *r = cfg;
  const std::size_t f = cfg.f;
  const char* name = info_of(cfg.rule).name;
  auto range_error = [&](const char* p, std::int64_t v, std::size_t lo, std::size_t hi, const char* lo_s,
                         const char* hi_s) {
    return Status::Invalid(std::string(name) + " needs " + lo_s + " <= " + p + " <= " + hi_s + ", got " + p +
                           "=" + std::to_string(v) + " with n=" + std::to_string(n) + ", f=" +
                           std::to_string(f) + " (allowed " + std::to_string(lo) + ".." + std::to_string(hi) +
                           ")");
  };
  switch (cfg.rule) {
    case RuleId::kMultiKrum:
      if (r->m == 0) r->m = static_cast<std::int64_t>(n - f - 2);
      if (r->m < 1 || std::size_t(r->m) > n - f) return range_error("m", r->m, 1, n - f, "1", "n-f");
      break;
    case RuleId::kBulyanMultiKrum: {
      const std::size_t theta = n - 2 * f - 2;
      if (r->m == 0) r->m = static_cast<std::int64_t>(n - f - 2);
      if (std::size_t(r->m) < theta || std::size_t(r->m) > n - f - 2)
        return range_error("m", r->m, theta, n - f - 2, "n-2f-2", "n-f-2");
      break;
    }
    case RuleId::kAveragedMedian:
      if (r->beta == 0) r->beta = static_cast<std::int64_t>(n - f);
      if (r->beta < 1 || std::size_t(r->beta) > n - f) return range_error("beta", r->beta, 1, n - f, "1", "n-f");
      break;
    case RuleId::kDnc:
      if (std::floor(cfg.filter_frac * double(f)) > double(n) - 1)
        return Status::Invalid("dnc needs n >= 2f+1 and floor(c*f) <= n-1, got n=" + std::to_string(n) +
                               ", f=" + std::to_string(f) + ", c=" + fmt(cfg.filter_frac) + " (floor(c*f)=" +
                               fmt(std::floor(cfg.filter_frac * double(f))) + ")");
      break;
    case RuleId::kSmea:
    case RuleId::kMda:
      if (log_binomial(n, f) > std::log(cfg.max_subsets) + 1e-9)
        return Status::Invalid(std::string(name) + " enumerates C(n, f) subsets: C(" + std::to_string(n) + ", " + std::to_string(f) +
                               ") = " + fmt(std::exp(log_binomial(n, f))) + " exceeds max_subsets=" +
                               fmt(cfg.max_subsets) + " (raise max_subsets or use another rule)");
      break;
    default:
      break;
  }
  return Status::Ok();
}

}  // namespace

Status check_rule_input(const RuleConfig& cfg, std::size_t n, std::size_t d) {
  const RuleInfo& info = info_of(cfg.rule);
  PYAGG_RETURN_IF_ERROR(check_size(info.name, n, d));
  // f is bounded before any 2f/4f arithmetic (cannot wrap).
  if (cfg.f > n)
    return Status::Invalid(std::string(info.name) + " needs f <= n, got n=" + std::to_string(n) +
                           ", f=" + std::to_string(cfg.f));
  if (n < info.min_n(cfg.f))
    return Status::Invalid(std::string(info.name) + " needs " + info.bound + ", got n=" + std::to_string(n) +
                           ", f=" + std::to_string(cfg.f));
  RuleConfig r;
  return resolve(cfg, n, &r);
}

Status check_pre_input(const PreConfig& cfg, std::size_t n, std::size_t d) {
  const PreInfo& info = pre_table()[static_cast<int>(cfg.pre)];
  PYAGG_RETURN_IF_ERROR(check_size(info.name, n, d));
  if (cfg.pre != PreId::kBucketing && cfg.pre != PreId::kZeroing && cfg.f >= n)
    return Status::Invalid(std::string(info.name) + " needs n > f, got n=" + std::to_string(n) +
                           ", f=" + std::to_string(cfg.f));
  return Status::Ok();
}

std::size_t pre_output_rows(const PreConfig& cfg, std::size_t n) {
  if (cfg.pre == PreId::kBucketing) {
    const std::size_t s = static_cast<std::size_t>(cfg.bucket_size);
    return (n + s - 1) / s;
  }
  return n;
}

namespace {

Status check_view(const GradView& g, const void* out) {
  if (!out) return Status::Invalid("output pointer is null");
  if (!g.data && !g.rows) return Status::Invalid("gradient pointer is null");
  if (g.data && g.rows) return Status::Invalid("give either a contiguous block or row pointers, not both");
  if (g.dtype != DType::kFloat32 && g.dtype != DType::kFloat64)
    return Status::Invalid("unsupported dtype code " + std::to_string(int(g.dtype)) + " (float32 or float64)");
  if (g.rows)
    for (std::size_t i = 0; i < g.n; ++i)
      if (!g.rows[i]) return Status::Invalid("row pointer " + std::to_string(i) + " is null");
  return Status::Ok();
}

template <typename T>
void run_cpu_rule(const RuleConfig& r, const T* const* rows, std::size_t n, std::size_t d, T* out,
                  const T* state) {
  const std::size_t f = r.f;
  switch (r.rule) {
    case RuleId::kAverage: cpu::average(rows, n, d, out); break;
    case RuleId::kAverageNan: cpu::average_nan(rows, n, d, out); break;
    case RuleId::kMedian: cpu::median(rows, n, d, out); break;
    case RuleId::kTrimmedMean: cpu::trimmed_mean(rows, n, d, f, out); break;
    case RuleId::kAveragedMedian: cpu::averaged_median(rows, n, d, std::size_t(r.beta), out); break;
    case RuleId::kKrum: cpu::krum(rows, n, d, f, out); break;
    case RuleId::kMultiKrum: cpu::multi_krum(rows, n, d, f, std::size_t(r.m), out); break;
    case RuleId::kBulyan: cpu::bulyan(rows, n, d, f, out); break;
    case RuleId::kBulyanMultiKrum: cpu::bulyan_multikrum(rows, n, d, f, std::size_t(r.m), out); break;
    case RuleId::kGeometricMedian:
      if (r.gm_init == 1)
        cpu::geometric_median(rows, n, d, r.nu, r.max_iter, r.tol, out);
      else
        cpu::geometric_median_mean_start(rows, n, d, r.nu, r.max_iter, r.tol, out);
      break;
    case RuleId::kCenteredClipping: cpu::centered_clipping(rows, n, d, r.tau, r.iters, state, out); break;
    case RuleId::kMda: cpu::mda(rows, n, d, f, out); break;
    case RuleId::kDnc:
    case RuleId::kClippedClustering:
    case RuleId::kSmea:
    case RuleId::kCaf:
    case RuleId::kZeroing: cpu::rule_next(r, rows, n, d, out); break;
  }
}

template <typename T>
std::vector<const T*> row_pointers(const GradView& g) {
  std::vector<const T*> rows(g.n);
  for (std::size_t i = 0; i < g.n; ++i) rows[i] = static_cast<const T*>(g.row(i));
  return rows;
}

template <typename T>
void run_cpu_pre(const PreConfig& c, const T* const* rows, std::size_t n, std::size_t d, T* out) {
  switch (c.pre) {
    case PreId::kNnm: cpu::nnm(rows, n, d, c.f, out); break;
    case PreId::kBucketing: cpu::bucketing(rows, n, d, std::size_t(c.bucket_size), c.seed, out); break;
    case PreId::kClipping: cpu::clipping(rows, n, d, c.f, c.tau, out); break;
    case PreId::kZeroing: cpu::zeroing_pre(rows, n, d, c.tau, c.norm_order, out); break;
  }
}

}  // namespace

bool rule_history(const RuleConfig& cfg, std::vector<double>* norms) {
  if (!cfg.history) return false;
  std::lock_guard<std::mutex> lock(cfg.history->mu);
  *norms = cfg.history->norms;
  return true;
}

Status set_rule_history(const RuleConfig& cfg, const std::vector<double>& norms) {
  if (!cfg.history)
    return Status::Invalid(std::string(info_of(cfg.rule).name) + " keeps no norm history (only clipped-clustering "
                           "with norm_history=all does)");
  for (double v : norms)
    if (!(v >= 0) || !std::isfinite(v))
      return Status::Invalid("norm history: every norm must be finite and >= 0, got " + fmt(v));
  std::lock_guard<std::mutex> lock(cfg.history->mu);
  cfg.history->norms = norms;
  return Status::Ok();
}

Status aggregate(const RuleConfig& cfg, const GradView& g, void* out, const void* state) {
  try {
    PYAGG_RETURN_IF_ERROR(check_view(g, out));
    PYAGG_RETURN_IF_ERROR(check_rule_input(cfg, g.n, g.d));
    RuleConfig r;
    PYAGG_RETURN_IF_ERROR(resolve(cfg, g.n, &r));
    if (g.device == Device::kCuda) {
#ifdef PYAGG_WITH_CUDA
      if (g.rows) return Status::Invalid("the CUDA backend needs a contiguous n*d block, got row pointers");
      return cuda::aggregate(r, g, out, state);
#else
      return Status::Unsupported("CUDA requested but pyagg was built without CUDA (PYAGG_WITH_CUDA=OFF)");
#endif
    }
    PYAGG_RETURN_IF_ERROR(cpu::isa_status());
    if (g.dtype == DType::kFloat32) {
      auto rows = row_pointers<float>(g);
      run_cpu_rule<float>(r, rows.data(), g.n, g.d, static_cast<float*>(out), static_cast<const float*>(state));
    } else {
      auto rows = row_pointers<double>(g);
      run_cpu_rule<double>(r, rows.data(), g.n, g.d, static_cast<double*>(out),
                           static_cast<const double*>(state));
    }
    return Status::Ok();
  } catch (const std::bad_alloc&) {
    return Status::OutOfMemory("out of memory while aggregating n=" + std::to_string(g.n) +
                               " d=" + std::to_string(g.d));
  } catch (const std::exception& e) {
    return Status::Internal(std::string("internal error: ") + e.what());
  } catch (...) {
    return Status::Internal("internal error: unknown exception");
  }
}

bool chain_fusable(PreId p, RuleId r) {
  const bool coordinate = r == RuleId::kAverage || r == RuleId::kAverageNan || r == RuleId::kMedian ||
                          r == RuleId::kTrimmedMean || r == RuleId::kAveragedMedian;
  if (p == PreId::kNnm)
    return coordinate || r == RuleId::kKrum || r == RuleId::kMultiKrum || r == RuleId::kMda || r == RuleId::kBulyan;
  if (p == PreId::kBucketing || p == PreId::kClipping || p == PreId::kZeroing) return coordinate;
  return false;
}

namespace {

// Below this many elements in the last pre-aggregator's output (n' * d), the
// intermediate fits in L2 anyway and writing it is cheaper than the fused
// path's per-span set-up (measured: bucketing > median at n=20, d=1e4, 2
// cores: 0.11 ms fused, 0.07 ms unfused; at d=1e6 fused is as fast or faster,
// see docs). Both paths give the same bits for coordinate-wise rules.
constexpr std::size_t kChainFuseMinElements = std::size_t(1) << 18;

template <typename T>
void run_cpu_chain(const RuleConfig& r, const std::vector<PreConfig>& pres, const GradView& g, T* out,
                   const T* state) {
  std::vector<const T*> rows = row_pointers<T>(g);
  std::size_t n = g.n;
  const std::size_t d = g.d;
  // Ping-pong buffers, default-initialised (no memset: every pre-aggregator
  // writes its whole output; a zeroed std::vector cost a memset of the n' x d
  // output per call, ~40% of a small unfused chain).
  std::unique_ptr<T[]> buf[2];
  const std::size_t np = pres.size();
  // Every pre-aggregator but a fused last one writes its output (ping-pong buffers).
  bool fuse_last = np > 0 && chain_fusable(pres[np - 1].pre, r.rule);
  if (fuse_last) {  // size of the last pre-aggregator's output
    std::size_t m = n;
    for (const PreConfig& p : pres) m = pre_output_rows(p, m);
    fuse_last = m * d >= kChainFuseMinElements;
  }
  for (std::size_t k = 0; k + (fuse_last ? 1 : 0) < np; ++k) {
    const std::size_t m = pre_output_rows(pres[k], n);
    buf[k % 2].reset(new T[m * d]);
    T* b = buf[k % 2].get();
    run_cpu_pre<T>(pres[k], rows.data(), n, d, b);
    rows.resize(m);
    for (std::size_t i = 0; i < m; ++i) rows[i] = b + i * d;
    n = m;
  }
  if (fuse_last)
    cpu::pre_rule_fused<T>(pres[np - 1], r, rows.data(), n, d, out);
  else
    run_cpu_rule<T>(r, rows.data(), n, d, out, state);
}

}  // namespace

Status aggregate_chain(const RuleConfig& cfg, const std::vector<PreConfig>& pres, const GradView& g, void* out,
                       const void* state) {
  try {
    PYAGG_RETURN_IF_ERROR(check_view(g, out));
    std::size_t n = g.n;
    for (const PreConfig& p : pres) {
      PYAGG_RETURN_IF_ERROR(check_pre_input(p, n, g.d));
      n = pre_output_rows(p, n);
    }
    PYAGG_RETURN_IF_ERROR(check_rule_input(cfg, n, g.d));
    RuleConfig r;
    PYAGG_RETURN_IF_ERROR(resolve(cfg, n, &r));
    if (g.device == Device::kCuda)
      return Status::Unsupported("aggregate_chain runs on the CPU; on CUDA apply preaggregate() then aggregate()");
    PYAGG_RETURN_IF_ERROR(cpu::isa_status());
    if (g.dtype == DType::kFloat32)
      run_cpu_chain<float>(r, pres, g, static_cast<float*>(out), static_cast<const float*>(state));
    else
      run_cpu_chain<double>(r, pres, g, static_cast<double*>(out), static_cast<const double*>(state));
    return Status::Ok();
  } catch (const std::bad_alloc&) {
    return Status::OutOfMemory("out of memory while aggregating (with pre-aggregators) n=" + std::to_string(g.n) +
                               " d=" + std::to_string(g.d));
  } catch (const std::exception& e) {
    return Status::Internal(std::string("internal error: ") + e.what());
  } catch (...) {
    return Status::Internal("internal error: unknown exception");
  }
}

Status preaggregate(const PreConfig& cfg, const GradView& g, void* out) {
  try {
    PYAGG_RETURN_IF_ERROR(check_view(g, out));
    PYAGG_RETURN_IF_ERROR(check_pre_input(cfg, g.n, g.d));
    if (g.device == Device::kCuda) {
#ifdef PYAGG_WITH_CUDA
      if (g.rows) return Status::Invalid("the CUDA backend needs a contiguous n*d block, got row pointers");
      return cuda::preaggregate(cfg, g, out);
#else
      return Status::Unsupported("CUDA requested but pyagg was built without CUDA (PYAGG_WITH_CUDA=OFF)");
#endif
    }
    PYAGG_RETURN_IF_ERROR(cpu::isa_status());
    if (g.dtype == DType::kFloat32) {
      auto rows = row_pointers<float>(g);
      run_cpu_pre<float>(cfg, rows.data(), g.n, g.d, static_cast<float*>(out));
    } else {
      auto rows = row_pointers<double>(g);
      run_cpu_pre<double>(cfg, rows.data(), g.n, g.d, static_cast<double*>(out));
    }
    return Status::Ok();
  } catch (const std::bad_alloc&) {
    return Status::OutOfMemory("out of memory while pre-aggregating n=" + std::to_string(g.n) +
                               " d=" + std::to_string(g.d));
  } catch (const std::exception& e) {
    return Status::Internal(std::string("internal error: ") + e.what());
  } catch (...) {
    return Status::Internal("internal error: unknown exception");
  }
}

}  // namespace pyagg
