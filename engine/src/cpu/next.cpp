// pyagg engine — CPU (OpenMP) backend: dnc, clipped-clustering, smea, caf,
// zeroing (rule and pre-aggregator). Exact definitions:
// shared/spec/rules_next.md; the selection / weighting logic, shared with the
// CUDA backend, is in common/select_next.h.
//
// Rules, papers and resilience bounds
// -----------------------------------
//  dnc (f; niters, b, c, seed, power_iters)  Shejwalkar & Houmansadr, NDSS 2021
//      (Divide-and-Conquer).                    n >= 2f+1 and floor(c*f) <= n-1.
//  clipped-clustering (f; norm_history, max_tau, linkage)  Li, Ngai & Voigt,
//      2023 (blades Clippedclustering).         n >= 2f+1.
//  smea (f; max_subsets)  Allouah, Guerraoui, Gupta, Pinot & Stephan, ICML 2023.
//                                               n >= 2f+1, C(n, f) <= max_subsets.
//  caf (f; power_iters, seed)  Allouah, Guerraoui & Stephan, ICML 2025, Alg. 2.
//                                               n >= 2f+1.
//  zeroing (tau, norm_order, mode)  TensorFlow Federated zeroing_factory.
//                                               n >= 1 (f unused).
//
// Passes over G
// -------------
//  1. row statistics (row_stats; zeroing and dnc with b < d only): per row,
//     over the fixed blocks of kReduceBlock coordinates, the sum of squares
//     (with finiteness) and, for zeroing with norm_order 1 or inf, the L1 and
//     L-inf norms; partials combined in block order (deterministic).
//  2. (dnc, clipped-clustering, smea, caf) the one distance pass,
//     cpu::pairwise_sqdist, or pairwise_sqdist_norms where the rule reads the
//     sums of squares (clipped-clustering; float64 usability): finiteness and
//     the sums of squares come from it with row_stats' bits, so smea, caf,
//     clipped-clustering and dnc with b >= d read G twice in all. dnc with
//     b < d runs it once per iteration on an n x b copy of the sampled
//     coordinates: all iterations' copies are taken during row_stats's pass
//     where they fit in kDncAheadBytes (DncAhead), else one gather from G per
//     iteration.
//  3. the output combination (combine, through weighted_sum): out =
//     sum_t a_t x_{idx_t} / den, rows in increasing index order, double.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu/cpu_backend.h"
#include "common/select_next.h"
#include "cpu/reduce.h"
#include "cpu/rowmean.h"

namespace pyagg {
namespace cpu {
namespace {

constexpr std::size_t kCombineChunk = 1024;  // zeroing_pre: coordinates per work item

// dnc with b < d: every iteration's sample drawn ahead (selection::DncDraws:
// the samples depend on the seed only) and the rows' values on it copied
// during row_stats's pass, block by block from the block it has just read,
// instead of one gather per iteration from G, whose n x b scattered reads
// each wait on memory (n = 20 and 100, d = 1e6: ~20% of dnc). Used where the
// copies take at most kDncAheadBytes (dnc's defaults, float32: 4.4 MB at n =
// 20, 20 MB at n = 100); the values and then the distances are the same.
constexpr std::size_t kDncAheadBytes = std::size_t(64) << 20;
template <typename T>
struct DncAhead {
  std::size_t n = 0, b = 0, nb = 0;
  std::vector<std::vector<std::size_t>> coords;  // per iteration, sorted
  std::vector<std::size_t> first;  // [k * (nb + 1) + blk]: coords[k]'s first index in block blk (blk = nb: b)
  std::vector<T> vals;             // [(k * n + i) * b + p] = x_i[coords[k][p]]

  // Its bytes (values, coordinates, block offsets) at most kDncAheadBytes;
  // counted in double: niters and b are the caller's and may be huge.
  static bool fits(const RuleConfig& r, std::size_t n, std::size_t d) {
    const double b = double(r.sub_dim), it = double(r.niters), nb = double((d + kReduceBlock - 1) / kReduceBlock);
    const double bytes = it * b * double(n * sizeof(T) + sizeof(std::size_t)) + it * (nb + 1) * sizeof(std::size_t);
    return bytes <= double(kDncAheadBytes);
  }
  DncAhead(const RuleConfig& r, std::size_t n_, std::size_t d)
      : n(n_), b(std::size_t(r.sub_dim)), nb((d + kReduceBlock - 1) / kReduceBlock) {
    selection::DncDraws draws(r.seed, n);
    const std::size_t it = std::size_t(r.niters);
    coords.reserve(it);
    first.resize(it * (nb + 1));
    for (std::size_t k = 0; k < it; ++k) {
      coords.push_back(draws.sample(d, b));
      std::size_t p = 0;
      for (std::size_t blk = 0; blk <= nb; ++blk) {
        while (p < b && coords[k][p] < blk * kReduceBlock) ++p;
        first[k * (nb + 1) + blk] = p;
      }
    }
    vals.resize(it * n * b);
  }
  // x = row i's block blk (from coordinate blk * kReduceBlock)
  void copy_block(const T* x, std::size_t i, std::size_t blk) {
    const std::size_t c0 = blk * kReduceBlock;
    for (std::size_t k = 0; k < coords.size(); ++k) {
      const std::size_t* cs = coords[k].data();
      T* o = vals.data() + (k * n + i) * b;
      for (std::size_t p = first[k * (nb + 1) + blk], e = first[k * (nb + 1) + blk + 1]; p < e; ++p) o[p] = x[cs[p] - c0];
    }
  }
};

// ahead (dnc, may be null): its copies taken from each block read.
template <typename T>
void row_stats(const T* const* rows, std::size_t n, std::size_t d, bool abs_norms, std::vector<selection::RowStat>* out,
               DncAhead<T>* ahead = nullptr) {
  const std::size_t nb = (d + kReduceBlock - 1) / kReduceBlock;
  std::vector<double> sq(n * nb), l1(abs_norms ? n * nb : 0), li(abs_norms ? n * nb : 0);
  std::vector<unsigned char> fin(n * nb);
#pragma omp parallel for schedule(dynamic, 4) num_threads(reduce::threads_for(n * d))
  for (std::ptrdiff_t k = 0; k < std::ptrdiff_t(n * nb); ++k) {
    const std::size_t i = std::size_t(k) / nb, b = std::size_t(k) % nb;
    const std::size_t c0 = b * kReduceBlock, len = std::min(kReduceBlock, d - c0);
    const T* x = rows[i] + c0;
    bool ok = true;
    if (!abs_norms) {
      sq[k] = reduce::block_sumsq_finite(x, len, &ok);
    } else {
      // One loop for everything zeroing reads (sum of squares, finiteness,
      // L1 and L-inf, all in double: |x| and max are exact), 16 lanes each in
      // reduce.h's native-width units, the lanes then folded in order.
      using reduce::RedUnit;
      using reduce::kRedUnits;
      using reduce::kUnitDoubles;
      typedef long long RedBits __attribute__((vector_size(sizeof(RedUnit))));
      const RedBits abs_mask = RedBits{} + 0x7fffffffffffffffLL;
      RedUnit s2u[kRedUnits] = {}, a1u[kRedUnits] = {}, fnu[kRedUnits] = {}, mxu[kRedUnits] = {};
      std::size_t c = 0;
      constexpr std::size_t L = reduce::kLanes;
      for (; c + L <= len; c += L)
        for (std::size_t u = 0; u < kRedUnits; ++u) {
          const RedUnit v = reduce::load_unit(x + c + u * kUnitDoubles);
          s2u[u] += v * v;
          fnu[u] += v - v;
          const RedUnit av = (RedUnit)((RedBits)v & abs_mask);
          a1u[u] += av;
          mxu[u] = mxu[u] < av ? av : mxu[u];
        }
      double s2[L], a1[L], fn[L], mx[L];
      reduce::unpack_units(s2u, s2);
      reduce::unpack_units(a1u, a1);
      reduce::unpack_units(fnu, fn);
      reduce::unpack_units(mxu, mx);
      for (; c < len; ++c) {
        const double v = double(x[c]);
        const std::size_t l = c % L;
        s2[l] += v * v;
        fn[l] += v - v;
        const double av = std::fabs(v);
        a1[l] += av;
        mx[l] = mx[l] < av ? av : mx[l];
      }
      double ssum = 0, asum = 0, m = 0;
      for (std::size_t l = 0; l < L; ++l) {
        ssum += s2[l];
        asum += a1[l];
        m = m < mx[l] ? mx[l] : m;
        ok = ok && fn[l] == 0.0;
      }
      sq[k] = ssum;
      l1[k] = asum;
      li[k] = m;
    }
    fin[k] = ok;
    if (ahead) ahead->copy_block(x, i, b);
  }
  out->assign(n, selection::RowStat{});
  for (std::size_t i = 0; i < n; ++i) {
    selection::RowStat& s = (*out)[i];
    for (std::size_t b = 0; b < nb; ++b) {
      s.sumsq += sq[i * nb + b];
      s.finite = s.finite && fin[i * nb + b];
      if (abs_norms) {
        s.l1 += l1[i * nb + b];
        s.linf = std::max(s.linf, li[i * nb + b]);
      }
    }
  }
}

// out = sum_t a_t x_{idx_t} / den per coordinate, in double, rows in
// increasing index order, one multiply-add per term on FMA targets:
// rowmean.h weighted_sum (its register tiles, hints and threads). The scalar
// chunk loop it replaced ran at 1.8x a pass of average, and GCC had
// vectorised it for double with a mix of fused and unfused multiply-adds.
template <typename T>
void combine(const T* const* rows, std::size_t d, const selection::Combo& c, T* out) {
  if (c.nan || c.idx.empty()) {
    const T v = c.nan ? std::numeric_limits<T>::quiet_NaN() : T(0);
    std::fill(out, out + d, v);
    return;
  }
  std::vector<const T*> sel(c.idx.size());
  for (std::size_t t = 0; t < sel.size(); ++t) sel[t] = rows[c.idx[t]];
  weighted_sum<T>(sel.data(), c.a.data(), sel.size(), d, 0.0, c.den, out);
}

// D of n rows of b values held one after the other from `copy`.
template <typename T>
void copy_distances(const T* copy, std::size_t n, std::size_t b, std::vector<double>* D) {
  std::vector<const T*> brows(n);
  for (std::size_t i = 0; i < n; ++i) brows[i] = copy + i * b;
  D->assign(n * n, 0.0);
  pairwise_sqdist<T>(brows.data(), n, b, D->data());
}

// D of the rows on the sorted coordinates `coords` (nullptr: all), gathered
// from G.
template <typename T>
void subset_distances(const T* const* rows, std::size_t n, std::size_t d, const std::vector<std::size_t>* coords,
                      std::vector<double>* D) {
  if (!coords) {
    D->assign(n * n, 0.0);
    pairwise_sqdist<T>(rows, n, d, D->data());
    return;
  }
  const std::size_t b = coords->size();
  std::vector<T> buf(n * b);
  const std::size_t* cs = coords->data();
#pragma omp parallel for schedule(static) num_threads(reduce::threads_for(n * b))
  for (std::ptrdiff_t i = 0; i < std::ptrdiff_t(n); ++i) {
    const T* x = rows[i];
    T* o = buf.data() + std::size_t(i) * b;
    for (std::size_t k = 0; k < b; ++k) o[k] = x[cs[k]];
  }
  copy_distances(buf.data(), n, b, D);
}

}  // namespace

template <typename T>
void dnc_sampled(const RuleConfig& r, const T* const* rows, std::size_t n, std::size_t d, bool ahead, T* out) {
  std::vector<selection::RowStat> st;
  std::unique_ptr<DncAhead<T>> pre(ahead && std::size_t(r.sub_dim) < d ? new DncAhead<T>(r, n, d) : nullptr);
  row_stats(rows, n, d, selection::needs_abs_norms(r), &st, pre.get());
  auto dist = [&](const std::vector<std::size_t>* coords, std::vector<double>* D) {
    if (!pre) {
      subset_distances(rows, n, d, coords, D);
      return;
    }
    // coords is &pre->coords[k] (selection::dnc's samples argument)
    const std::size_t k = std::size_t(coords - pre->coords.data());
    copy_distances(pre->vals.data() + k * n * pre->b, n, pre->b, D);
  };
  const selection::Combo c = selection::dnc(r, n, d, st, dist, pre ? &pre->coords : nullptr);
  combine(rows, d, c, out);
}

template <typename T>
void rule_next(const RuleConfig& r, const T* const* rows, std::size_t n, std::size_t d, T* out) {
  std::vector<selection::RowStat> st;
  selection::Combo c;
  // The rules that read D on all coordinates (smea, caf, clipped-clustering,
  // dnc with b >= d) take the row statistics they need from the distance
  // pass, which reads G once: D[i][i] = 0 exactly for a row with every entry
  // finite, and pairwise_sqdist_norms's sums of squares have row_stats' bits
  // (block sums in block order). float32 smea, caf and dnc skip the sums: a
  // row's float64 sum of squares cannot overflow (|x| <= 3.4e38, d < 2^62), so
  // "usable" is "every entry finite". These rules then read G twice
  // (distances, output), not three times.
  const bool full_dnc = r.rule == RuleId::kDnc && std::size_t(r.sub_dim) >= d;
  if (r.rule == RuleId::kSmea || r.rule == RuleId::kCaf || r.rule == RuleId::kClippedClustering || full_dnc) {
    std::vector<double> D(n * n), sq;
    const bool sums = r.rule == RuleId::kClippedClustering || !std::is_same<T, float>::value;
    if (sums) {
      sq.resize(n);
      pairwise_sqdist_norms<T>(rows, n, d, D.data(), sq.data());
    } else {
      pairwise_sqdist<T>(rows, n, d, D.data());
    }
    st.assign(n, selection::RowStat{});
    for (std::size_t i = 0; i < n; ++i) {
      st[i].finite = D[i * n + i] == 0.0;
      if (sums) st[i].sumsq = sq[i];
    }
    if (full_dnc)
      c = selection::dnc(r, n, d, st, [&](const std::vector<std::size_t>*, std::vector<double>* Dk) { *Dk = D; });
    else
      c = selection::from_distances(r, D.data(), n, st);
    combine(rows, d, c, out);
    return;
  }
  // dnc on sampled coordinates (its norms are over all of them), and zeroing.
  if (r.rule == RuleId::kDnc) {
    dnc_sampled(r, rows, n, d, DncAhead<T>::fits(r, n, d), out);
    return;
  }
  row_stats(rows, n, d, selection::needs_abs_norms(r), &st);
  c = selection::zeroing(r, st);
  combine(rows, d, c, out);
}

template <typename T>
std::vector<unsigned char> zeroing_keep_rows(const T* const* rows, std::size_t n, std::size_t d, double tau,
                                             int norm_order) {
  std::vector<selection::RowStat> st;
  row_stats(rows, n, d, norm_order != 2, &st);
  return selection::zeroing_keep(st, tau, norm_order);
}

template <typename T>
void zeroing_pre(const T* const* rows, std::size_t n, std::size_t d, double tau, int norm_order, T* out) {
  const auto keep = zeroing_keep_rows(rows, n, d, tau, norm_order);
  const std::size_t nchunks = (d + kCombineChunk - 1) / kCombineChunk;
#pragma omp parallel for schedule(dynamic, 8) num_threads(reduce::threads_for(n * d))
  for (std::ptrdiff_t k = 0; k < std::ptrdiff_t(n * nchunks); ++k) {
    const std::size_t i = std::size_t(k) / nchunks, c0 = (std::size_t(k) % nchunks) * kCombineChunk;
    const std::size_t len = std::min(kCombineChunk, d - c0);
    if (keep[i])
      std::memcpy(out + i * d + c0, rows[i] + c0, len * sizeof(T));
    else
      std::fill(out + i * d + c0, out + i * d + c0 + len, T(0));
  }
}

template void dnc_sampled<float>(const RuleConfig&, const float* const*, std::size_t, std::size_t, bool, float*);
template void dnc_sampled<double>(const RuleConfig&, const double* const*, std::size_t, std::size_t, bool, double*);
template void rule_next<float>(const RuleConfig&, const float* const*, std::size_t, std::size_t, float*);
template void rule_next<double>(const RuleConfig&, const double* const*, std::size_t, std::size_t, double*);
template std::vector<unsigned char> zeroing_keep_rows<float>(const float* const*, std::size_t, std::size_t, double,
                                                             int);
template std::vector<unsigned char> zeroing_keep_rows<double>(const double* const*, std::size_t, std::size_t, double,
                                                              int);
template void zeroing_pre<float>(const float* const*, std::size_t, std::size_t, double, int, float*);
template void zeroing_pre<double>(const double* const*, std::size_t, std::size_t, double, int, double*);

}  // namespace cpu
}  // namespace pyagg
