// pyagg engine — run-time ISA dispatch of the CPU backend.
//
// Every pyagg::cpu:: function declared in cpu/cpu_backend.h is defined here
// as a forwarder to the copy of the kernels compiled for the chosen ISA level
// (pyagg::cpu_<isa>::, see CMakeLists.txt "CPU ISA dispatch" and the
// generated pyagg_cpu/variants.h). A kernel added to cpu_backend.h needs one
// forwarder and one instantiation line here; a forgotten one is a link error.
#include "cpu_dispatch.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu/cpu_backend.h"
#include "pyagg_cpu/variants.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#endif

namespace pyagg {
namespace cpu {
namespace {

constexpr const char* kIsaNames[] = PYAGG_CPU_ISA_NAMES;
constexpr int kIsaCount = PYAGG_CPU_ISA_COUNT;

// Whether this CPU (and the OS: libgcc checks XCR0 for AVX/AVX-512 state)
// runs code compiled for `isa`.
bool cpu_runs(const char* isa) {
  if (!std::strcmp(isa, "base") || !std::strcmp(isa, "native")) return true;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  // F16C, MOVBE and LZCNT (also in x86-64-v3) straight from cpuid: clang's
  // __builtin_cpu_supports does not know their names.
  unsigned a = 0, b = 0, c1 = 0, d = 0, c8 = 0;
  const bool leaf1 = __get_cpuid(1, &a, &b, &c1, &d) != 0;
  const bool leaf8 = __get_cpuid(0x80000001u, &a, &b, &c8, &d) != 0;
  const bool f16c = leaf1 && (c1 & (1u << 29)), movbe = leaf1 && (c1 & (1u << 22));
  const bool lzcnt = leaf8 && (c8 & (1u << 5));
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
                  __builtin_cpu_supports("popcnt") && f16c && movbe && lzcnt;
  if (!std::strcmp(isa, "avx2")) return v3;
  if (!std::strcmp(isa, "avx512"))
    return v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
#endif
  return false;
}

struct Choice {
  int isa = 0;
  std::string error;
  std::string compiled;
};

Choice choose() {
  Choice c;
  for (int i = 0; i < kIsaCount; ++i) {
    if (cpu_runs(kIsaNames[i])) c.isa = i;  // lowest first: the last supported one is the best
    if (i) c.compiled += ' ';
    c.compiled += kIsaNames[i];
  }
  const char* want = std::getenv("PYAGG_CPU_ISA");
  if (want && *want) {
    int found = -1;
    for (int i = 0; i < kIsaCount; ++i)
      if (!std::strcmp(want, kIsaNames[i])) found = i;
    if (found < 0)
      c.error = std::string("PYAGG_CPU_ISA=") + want + " is not an ISA level of this build (" + c.compiled + ")";
    else if (!cpu_runs(want))
      c.error = std::string("PYAGG_CPU_ISA=") + want + " but this CPU does not support " + want;
    else
      c.isa = found;
  }
  return c;
}

const Choice& choice() {
  static const Choice c = choose();  // thread-safe, once per process
  return c;
}

}  // namespace

Status isa_status() { return choice().error.empty() ? Status::Ok() : Status::Invalid(choice().error); }
const char* isa_in_use() { return kIsaNames[choice().isa]; }
const char* isas_compiled() { return choice().compiled.c_str(); }

#define PYAGG_FWD(fn, ...) PYAGG_CPU_CALL(choice().isa, fn, __VA_ARGS__)

template <typename T> void average(const T* const* rows, std::size_t n, std::size_t d, T* out) {
  PYAGG_FWD(average, rows, n, d, out);
}
template <typename T> void average_nan(const T* const* rows, std::size_t n, std::size_t d, T* out) {
  PYAGG_FWD(average_nan, rows, n, d, out);
}
template <typename T> void median(const T* const* rows, std::size_t n, std::size_t d, T* out) {
  PYAGG_FWD(median, rows, n, d, out);
}
template <typename T>
void trimmed_mean(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) {
  PYAGG_FWD(trimmed_mean, rows, n, d, f, out);
}
template <typename T>
void averaged_median(const T* const* rows, std::size_t n, std::size_t d, std::size_t beta, T* out) {
  PYAGG_FWD(averaged_median, rows, n, d, beta, out);
}
template <typename T>
void averaged_upper_median(const T* const* rows, std::size_t n, std::size_t d, std::size_t beta, T* out) {
  PYAGG_FWD(averaged_upper_median, rows, n, d, beta, out);
}
template <typename T>
void geometric_median_mean_start(const T* const* rows, std::size_t n, std::size_t d, double nu,
                                 std::int64_t max_iter, double tol, T* out) {
  PYAGG_FWD(geometric_median_mean_start, rows, n, d, nu, max_iter, tol, out);
}
template <typename T>
void pairwise_sqdist_counted(const T* const* rows, std::size_t n, std::size_t d, double* D, std::size_t* exact) {
  PYAGG_FWD(pairwise_sqdist_counted, rows, n, d, D, exact);
}
template <typename T>
void pairwise_sqdist_select(const T* const* rows, std::size_t n, std::size_t d, double* D, std::size_t* exact,
                            std::size_t* dp_blocks) {
  PYAGG_FWD(pairwise_sqdist_select, rows, n, d, D, exact, dp_blocks);
}
template <typename T>
void pairwise_sqdist_norms(const T* const* rows, std::size_t n, std::size_t d, double* D, double* sq) {
  PYAGG_FWD(pairwise_sqdist_norms, rows, n, d, D, sq);
}
template <typename T>
void pairwise_sqdist_exact_double(const T* const* rows, std::size_t n, std::size_t d, double* D) {
  PYAGG_FWD(pairwise_sqdist_exact_double, rows, n, d, D);
}
template <typename LaneT>
double exact_kernel_rel_bound(std::size_t n, std::size_t d) {
  PYAGG_FWD(exact_kernel_rel_bound<LaneT>, n, d);
}
template <typename T>
void geometric_median(const T* const* rows, std::size_t n, std::size_t d, double nu, std::int64_t max_iter,
                      double tol, T* out) {
  PYAGG_FWD(geometric_median, rows, n, d, nu, max_iter, tol, out);
}
template <typename T>
void centered_clipping(const T* const* rows, std::size_t n, std::size_t d, double tau, std::int64_t iters,
                       const T* state, T* out) {
  PYAGG_FWD(centered_clipping, rows, n, d, tau, iters, state, out);
}
template <typename T> void pairwise_sqdist(const T* const* rows, std::size_t n, std::size_t d, double* D) {
  PYAGG_FWD(pairwise_sqdist, rows, n, d, D);
}
template <typename T> void krum(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) {
  PYAGG_FWD(krum, rows, n, d, f, out);
}
template <typename T>
void multi_krum(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, std::size_t m, T* out) {
  PYAGG_FWD(multi_krum, rows, n, d, f, m, out);
}
template <typename T> void bulyan(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) {
  PYAGG_FWD(bulyan, rows, n, d, f, out);
}
template <typename T>
void bulyan_multikrum(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, std::size_t m, T* out) {
  PYAGG_FWD(bulyan_multikrum, rows, n, d, f, m, out);
}
template <typename T> void mda(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) {
  PYAGG_FWD(mda, rows, n, d, f, out);
}
template <typename T> void nnm(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) {
  PYAGG_FWD(nnm, rows, n, d, f, out);
}
template <typename T>
void bucketing(const T* const* rows, std::size_t n, std::size_t d, std::size_t s, std::uint64_t seed, T* out) {
  PYAGG_FWD(bucketing, rows, n, d, s, seed, out);
}
template <typename T>
void pre_rule_fused(const PreConfig& p, const RuleConfig& r, const T* const* rows, std::size_t n, std::size_t d,
                    T* out) {
  PYAGG_FWD(pre_rule_fused, p, r, rows, n, d, out);
}
template <typename T>
void clipping(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, double tau, T* out) {
  PYAGG_FWD(clipping, rows, n, d, f, tau, out);
}
template <typename T>
void rule_next(const RuleConfig& r, const T* const* rows, std::size_t n, std::size_t d, T* out) {
  PYAGG_FWD(rule_next, r, rows, n, d, out);
}
template <typename T>
void dnc_sampled(const RuleConfig& r, const T* const* rows, std::size_t n, std::size_t d, bool ahead, T* out) {
  PYAGG_FWD(dnc_sampled, r, rows, n, d, ahead, out);
}
template <typename T>
void zeroing_pre(const T* const* rows, std::size_t n, std::size_t d, double tau, int norm_order, T* out) {
  PYAGG_FWD(zeroing_pre, rows, n, d, tau, norm_order, out);
}

#define PYAGG_INSTANTIATE(T)                                                                            \
  template void average<T>(const T* const*, std::size_t, std::size_t, T*);                              \
  template void average_nan<T>(const T* const*, std::size_t, std::size_t, T*);                          \
  template void median<T>(const T* const*, std::size_t, std::size_t, T*);                               \
  template void trimmed_mean<T>(const T* const*, std::size_t, std::size_t, std::size_t, T*);            \
  template void averaged_median<T>(const T* const*, std::size_t, std::size_t, std::size_t, T*);         \
  template void geometric_median<T>(const T* const*, std::size_t, std::size_t, double, std::int64_t,    \
                                    double, T*);                                                        \
  template void geometric_median_mean_start<T>(const T* const*, std::size_t, std::size_t, double,       \
                                               std::int64_t, double, T*);                               \
  template void averaged_upper_median<T>(const T* const*, std::size_t, std::size_t, std::size_t, T*);   \
  template void pairwise_sqdist_counted<T>(const T* const*, std::size_t, std::size_t, double*,          \
                                           std::size_t*);                                               \
  template void pairwise_sqdist_select<T>(const T* const*, std::size_t, std::size_t, double*, std::size_t*, \
                                          std::size_t*);                                                  \
  template void pairwise_sqdist_norms<T>(const T* const*, std::size_t, std::size_t, double*, double*);  \
  template void pairwise_sqdist_exact_double<T>(const T* const*, std::size_t, std::size_t, double*);    \
  template double exact_kernel_rel_bound<T>(std::size_t, std::size_t);                                  \
  template void centered_clipping<T>(const T* const*, std::size_t, std::size_t, double, std::int64_t,   \
                                     const T*, T*);                                                     \
  template void pairwise_sqdist<T>(const T* const*, std::size_t, std::size_t, double*);                 \
  template void krum<T>(const T* const*, std::size_t, std::size_t, std::size_t, T*);                    \
  template void multi_krum<T>(const T* const*, std::size_t, std::size_t, std::size_t, std::size_t, T*); \
  template void bulyan<T>(const T* const*, std::size_t, std::size_t, std::size_t, T*);                  \
  template void bulyan_multikrum<T>(const T* const*, std::size_t, std::size_t, std::size_t, std::size_t, \
                                    T*);                                                                \
  template void mda<T>(const T* const*, std::size_t, std::size_t, std::size_t, T*);                     \
  template void nnm<T>(const T* const*, std::size_t, std::size_t, std::size_t, T*);                     \
  template void bucketing<T>(const T* const*, std::size_t, std::size_t, std::size_t, std::uint64_t, T*); \
  template void clipping<T>(const T* const*, std::size_t, std::size_t, std::size_t, double, T*);        \
  template void pre_rule_fused<T>(const PreConfig&, const RuleConfig&, const T* const*, std::size_t, std::size_t, T*); \
  template void rule_next<T>(const RuleConfig&, const T* const*, std::size_t, std::size_t, T*);         \
  template void dnc_sampled<T>(const RuleConfig&, const T* const*, std::size_t, std::size_t, bool, T*); \
  template void zeroing_pre<T>(const T* const*, std::size_t, std::size_t, double, int, T*);

PYAGG_INSTANTIATE(float)
PYAGG_INSTANTIATE(double)

}  // namespace cpu
}  // namespace pyagg
