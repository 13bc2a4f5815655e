// pyagg engine — CPU backend: a pre-aggregator fused with the rule that
// follows it (Aggregator(rule, pre=[...]) / pyagg.aggregate(..., pre=[...])).
//
// The unfused chain writes the pre-aggregator's n' x d output to memory and
// the rule reads it back. Here the output is never written whole:
//
//   SPANS. Coordinates are processed in spans of L (a multiple of
//   kReduceBlock, so every kernel sees the same tiles and blocks as on the
//   whole rows); for each span the pre-aggregator's rows that the rule needs
//   are computed into an L2-resident n'' x L buffer (nnm, bucketing: the mean
//   of each row's set, by mean_sets_chunk (rowmean.h: mean_chunk's order and
//   arithmetic, the sets of a chunk from one read of it); clipping: the row scaled or copied; zeroing: the row copied or
//   zero), then the rule runs on the
//   buffer and writes its output span. Per span, G's slice is read from memory
//   once. Every rule here computes each output coordinate from that
//   coordinate's values alone (or from row means whose per-coordinate order is
//   fixed), so a span gives the same bits as the whole rows:
//   RESULT = THE UNFUSED CHAIN, BIT FOR BIT.
//
//   NNM THEN A DISTANCE RULE (krum, multi-krum, mda, bulyan). NNM's row a is
//   the mean of its set S_a: x'_a = sum_j C_aj x_j with C_aj = 1/|S_a| on S_a.
//   With e = C_a - C_b (sum e = 0),
//       ||x'_a - x'_b||^2 = -1/2 sum_jk e_j e_k D_jk,
//   so the rule's distance matrix follows from NNM's own D (already computed
//   for NNM's selection) in O(n'^2 |S_a ^ S_b|^2) flops: no second distance
//   pass, and only the rows the rule selects are ever formed. A row whose set
//   holds a non-finite input row is non-finite (D' = +inf, as the rule's
//   distance pass would say). The D' values are computed in double from the
//   exact rows, where the unfused chain computes them from the n' x d output
//   rounded to T: the selections agree except between rows whose scores differ
//   by less than that rounding; given the same selection the output is the
//   same bits (the selected rows are formed by the same mean_chunk).
//
// Which (pre, rule) pairs come here: rules.cpp chain_fusable().
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "common/select_distance.h"
#include "common/splitmix.h"
#include "cpu/cpu_backend.h"
#include "cpu/reduce.h"
#include "cpu/rowmean.h"

namespace pyagg {
namespace cpu {
namespace {

constexpr std::size_t kChainChunk = 1024;              // coordinates per parallel work item
constexpr std::size_t kChainBufferBytes = 2u << 20;    // the span buffer: ~2 MiB (L2-resident)

// The pre-aggregator's output rows as recipes over G.
template <typename T>
struct Producer {
  // sets (nnm, bucketing): row b = mean of rows idx[start[b] .. start[b+1]) in that order
  std::vector<std::size_t> idx, start;
  bool zero_start = false;  // bucketing's sum starts at 0.0
  // clipping: row i = x_i * scale[i] if scale[i] < 1, else x_i
  std::vector<double> scale;
  // zeroing: row i = x_i if keep[i], else a zero row
  std::vector<unsigned char> keep;
  bool sets() const { return !start.empty(); }
  // same[b]: the first row whose set equals row b's (nnm: the honest rows
  // often share one set); its rows are formed once and aliased (same bits).
  std::vector<std::size_t> same;
  void find_same() {
    const std::size_t m = start.size() - 1;
    same.resize(m);
    for (std::size_t b = 0; b < m; ++b) {
      same[b] = b;
      const std::size_t len = start[b + 1] - start[b];
      for (std::size_t q = 0; q < b; ++q)
        if (same[q] == q && start[q + 1] - start[q] == len &&
            std::equal(idx.begin() + std::ptrdiff_t(start[b]), idx.begin() + std::ptrdiff_t(start[b + 1]),
                       idx.begin() + std::ptrdiff_t(start[q]))) {
          same[b] = q;
          break;
        }
    }
  }

  // Row b of the pre-aggregator's output on coordinates [c0, c0 + len) into o.
  void make(const T* const* rows, std::size_t b, std::size_t c0, std::size_t len, T* o) const {
    if (sets()) {
      const std::size_t* s = idx.data() + start[b];
      const std::size_t cnt = start[b + 1] - start[b];
      if (zero_start)
        mean_chunk<T, true>(rows, s, cnt, c0, len, o);
      else
        mean_chunk<T, false>(rows, s, cnt, c0, len, o);
    } else if (!keep.empty()) {
      if (keep[b])
        std::memcpy(o, rows[b] + c0, len * sizeof(T));
      else
        std::fill(o, o + len, T(0));
    } else if (scale[b] < 1.0) {
      scale_block(rows[b] + c0, o, len, scale[b]);
    } else {
      std::memcpy(o, rows[b] + c0, len * sizeof(T));
    }
  }
};

bool coordinate_rule(RuleId r) {
  return r == RuleId::kAverage || r == RuleId::kAverageNan || r == RuleId::kMedian ||
         r == RuleId::kTrimmedMean || r == RuleId::kAveragedMedian;
}

// D' of NNM's output rows from G's distance matrix (see the header comment).
std::vector<double> mixed_distances(const double* D, std::size_t n, const std::vector<std::size_t>& idx,
                                    const std::vector<std::size_t>& start) {
  const std::size_t m = start.size() - 1;
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> Dm(m * m, 0.0);
  std::vector<unsigned char> fin(m, 1);
  for (std::size_t a = 0; a < m; ++a)
    for (std::size_t t = start[a]; t < start[a + 1]; ++t)
      if (!selection::row_is_finite(D, n, idx[t])) fin[a] = 0;
  std::vector<double> e(n);
  std::vector<std::size_t> nz;
  nz.reserve(n);
  for (std::size_t a = 0; a < m; ++a) {
    Dm[a * m + a] = fin[a] ? 0.0 : inf;
    for (std::size_t b = a + 1; b < m; ++b) {
      double v;
      if (!fin[a] || !fin[b]) {
        v = inf;
      } else {
        std::fill(e.begin(), e.end(), 0.0);
        const double wa = 1.0 / double(start[a + 1] - start[a]), wb = 1.0 / double(start[b + 1] - start[b]);
        for (std::size_t t = start[a]; t < start[a + 1]; ++t) e[idx[t]] += wa;
        for (std::size_t t = start[b]; t < start[b + 1]; ++t) e[idx[t]] -= wb;
        nz.clear();
        for (std::size_t j = 0; j < n; ++j)
          if (e[j] != 0.0) nz.push_back(j);
        double q = 0.0;
        for (std::size_t u = 0; u < nz.size(); ++u)
          for (std::size_t w = u + 1; w < nz.size(); ++w) q += e[nz[u]] * e[nz[w]] * D[nz[u] * n + nz[w]];
        v = -q;  // -1/2 * (2 * sum over u < w); the diagonal of D is 0
        if (!(v >= 0.0)) v = std::isnan(v) ? inf : 0.0;
      }
      Dm[a * m + b] = v;
      Dm[b * m + a] = v;
    }
  }
  return Dm;
}

// Runs `op(brows, len, out + s0)` on every span, after the producer's rows
// `need` were formed for that span into brows[0 .. need.size()).
template <typename T, typename Op>
void for_spans(const Producer<T>& p, const T* const* rows, std::size_t n, std::size_t d,
               const std::vector<std::size_t>& need, T* out, Op&& op) {
  // Rows whose set equals an earlier needed row's are not formed: their
  // buffer row is that row's (a pointer alias).
  std::vector<std::size_t> form, slot(need.size());
  for (std::size_t k = 0; k < need.size(); ++k) {
    std::size_t alias = need.size();
    if (p.sets())
      for (std::size_t q = 0; q < k; ++q)
        if (p.same[need[q]] == p.same[need[k]]) {
          alias = q;
          break;
        }
    if (alias == need.size()) {
      slot[k] = form.size();
      form.push_back(need[k]);
    } else {
      slot[k] = slot[alias];
    }
  }
  const std::size_t nb = form.size();
  std::size_t span = kChainBufferBytes / (std::max<std::size_t>(nb, 1) * sizeof(T));
  span = std::max(kReduceBlock, span / kReduceBlock * kReduceBlock);
  span = std::min(span, (d + kReduceBlock - 1) / kReduceBlock * kReduceBlock);
  std::unique_ptr<T[]> buf(new T[nb * span]);
  std::vector<T*> brow(nb);
  std::vector<const T*> crow(need.size());
  for (std::size_t k = 0; k < nb; ++k) brow[k] = buf.get() + k * span;
  for (std::size_t k = 0; k < need.size(); ++k) crow[k] = brow[slot[k]];
  const std::size_t* nd = form.data();
  T* const* bp = brow.data();
  // Set pre-aggregators: the formed rows' means per chunk from one read of it
  // (rowmean.h mean_sets_chunk, the same bits as Producer::make).
  // nnm's sets by frequency where every sum is exact (rowmean.h finish_sets).
  MeanSets ms, freq;
  const MeanSets* alt = nullptr;
  if (p.sets()) {
    for (std::size_t k = 0; k < nb; ++k)
      ms.add(p.idx.data() + p.start[nd[k]], p.start[nd[k] + 1] - p.start[nd[k]]);
    alt = finish_sets<T>(ms, freq, n);
  }
  // Each output row of a set pre-aggregator reads |set| rows; clipping and zeroing one.
  const std::size_t reads = n;
  for (std::size_t s0 = 0; s0 < d; s0 += span) {
    const std::size_t len = std::min(span, d - s0);
    const int nthreads = reduce::threads_for(reads * len);
    if (p.sets()) {
      auto where = [&](std::size_t k, std::size_t c0, std::size_t) { return bp[k] + (c0 - s0); };
      auto done = [](std::size_t, std::size_t, std::size_t) {};
      if (p.zero_start)
        mean_sets_chunks<T, true>(ms, rows, s0, s0 + len, kChainChunk, nthreads, where, done, alt);
      else
        mean_sets_chunks<T, false>(ms, rows, s0, s0 + len, kChainChunk, nthreads, where, done, alt);
    } else {
      const std::size_t nchunks = (len + kChainChunk - 1) / kChainChunk;
#pragma omp parallel for schedule(static) num_threads(nthreads)
      for (std::ptrdiff_t ch = 0; ch < std::ptrdiff_t(nchunks); ++ch) {
        const std::size_t c0 = std::size_t(ch) * kChainChunk, clen = std::min(kChainChunk, len - c0);
        for (std::size_t k = 0; k < nb; ++k) p.make(rows, nd[k], s0 + c0, clen, bp[k] + c0);
      }
    }
    op(crow.data(), len, out + s0);
  }
}

template <typename T>
void run_coordinate_rule(const RuleConfig& r, const T* const* rows, std::size_t n, std::size_t d, T* out) {
  switch (r.rule) {
    case RuleId::kAverage: average(rows, n, d, out); break;
    case RuleId::kAverageNan: average_nan(rows, n, d, out); break;
    case RuleId::kMedian: median(rows, n, d, out); break;
    case RuleId::kTrimmedMean: trimmed_mean(rows, n, d, r.f, out); break;
    case RuleId::kAveragedMedian: averaged_median(rows, n, d, std::size_t(r.beta), out); break;
    default: break;  // not reached: chain_fusable() in rules.cpp
  }
}

}  // namespace

template <typename T>
void pre_rule_fused(const PreConfig& pc, const RuleConfig& r, const T* const* rows, std::size_t n, std::size_t d,
                    T* out) {
  Producer<T> p;
  std::vector<double> D;
  std::size_t m = n;  // the pre-aggregator's output rows
  if (pc.pre == PreId::kNnm) {
    D.resize(n * n);
    // Before a coordinate-wise rule nnm only ranks D: the selection rules'
    // distances (pairwise_sqdist_select), so that its sets, and the result,
    // are those of the unfused nnm. Before a distance rule D also feeds the
    // quadratic forms of mixed_distances, which cancel: the double Gram form.
    if (coordinate_rule(r.rule))
      pairwise_sqdist_select<T>(rows, n, d, D.data(), nullptr, nullptr);
    else
      pairwise_sqdist<T>(rows, n, d, D.data());
    const std::size_t s = n - pc.f;
    p.idx.reserve(n * s);
    for (std::size_t i = 0; i < n; ++i) {
      p.start.push_back(p.idx.size());
      const auto si = selection::nnm_select(D.data(), n, pc.f, i);
      p.idx.insert(p.idx.end(), si.begin(), si.end());
    }
    p.start.push_back(p.idx.size());
    p.find_same();
  } else if (pc.pre == PreId::kBucketing) {
    const std::size_t s = std::size_t(pc.bucket_size);
    m = (n + s - 1) / s;
    p.idx = shuffled_indices(n, pc.seed);
    for (std::size_t b = 0; b < m; ++b) p.start.push_back(b * s);
    p.start.push_back(n);
    p.zero_start = true;
    p.same.resize(m);
    for (std::size_t b = 0; b < m; ++b) p.same[b] = b;  // disjoint sets
  } else if (pc.pre == PreId::kZeroing) {
    p.keep = zeroing_keep_rows<T>(rows, n, d, pc.tau, pc.norm_order);
  } else {  // clipping
    p.scale.resize(n);
    clipping_scales<T>(rows, n, d, pc.f, pc.tau, p.scale.data());
  }

  if (!p.sets() && r.rule == RuleId::kAverage) {
    // clipping or zeroing > average: one more pass over G, no span buffer
    // (coordinate.cpp average_scaled: average's arithmetic on the rows as
    // clipping or zeroing writes them).
    average_scaled<T>(rows, n, d, p.scale.empty() ? nullptr : p.scale.data(), p.keep.empty() ? nullptr : p.keep.data(),
                      out);
    return;
  }
  if (coordinate_rule(r.rule)) {
    std::vector<std::size_t> all(m);
    for (std::size_t b = 0; b < m; ++b) all[b] = b;
    for_spans(p, rows, n, d, all, out, [&](const T* const* brows, std::size_t len, T* o) {
      run_coordinate_rule<T>(r, brows, m, len, o);
    });
    return;
  }

  // NNM then a distance-based rule: the rule's selection on D'.
  const std::vector<double> Dm = mixed_distances(D.data(), n, p.idx, p.start);
  std::vector<std::size_t> sel;
  switch (r.rule) {
    case RuleId::kKrum: sel = selection::krum_select(Dm.data(), m, r.f, 1); break;
    case RuleId::kMultiKrum:
      sel = selection::krum_select(Dm.data(), m, r.f, std::size_t(r.m));
      std::sort(sel.begin(), sel.end());
      break;
    case RuleId::kMda: sel = selection::mda_select(Dm.data(), m, r.f); break;
    case RuleId::kBulyan:
      sel = selection::bulyan_select(Dm.data(), m, r.f);
      std::sort(sel.begin(), sel.end());
      break;
    default: return;  // not reached: chain_fusable() in rules.cpp
  }
  if (r.rule == RuleId::kKrum) {
    // The selected row itself (the unfused rule copies it).
    const std::size_t nchunks = (d + kChainChunk - 1) / kChainChunk;
#pragma omp parallel for schedule(static) num_threads(reduce::threads_for(n * d))
    for (std::ptrdiff_t ch = 0; ch < std::ptrdiff_t(nchunks); ++ch) {
      const std::size_t c0 = std::size_t(ch) * kChainChunk, clen = std::min(kChainChunk, d - c0);
      p.make(rows, sel[0], c0, clen, out + c0);
    }
    return;
  }
  if (r.rule == RuleId::kBulyan) {
    const std::size_t theta = sel.size();
    for_spans(p, rows, n, d, sel, out, [&](const T* const* brows, std::size_t len, T* o) {
      averaged_median<T>(brows, theta, len, theta - 2 * r.f, o);
    });
    return;
  }
  // multi-krum, mda: the mean of the selected rows, in index order.
  const std::size_t cnt = sel.size();
  std::vector<std::size_t> ord(cnt);
  for (std::size_t k = 0; k < cnt; ++k) ord[k] = k;
  for_spans(p, rows, n, d, sel, out, [&](const T* const* brows, std::size_t len, T* o) {
    const std::size_t nchunks = (len + kChainChunk - 1) / kChainChunk;
#pragma omp parallel for schedule(static) num_threads(reduce::threads_for(cnt * len))
    for (std::ptrdiff_t ch = 0; ch < std::ptrdiff_t(nchunks); ++ch) {
      const std::size_t c0 = std::size_t(ch) * kChainChunk, clen = std::min(kChainChunk, len - c0);
      mean_chunk<T, false>(brows, ord.data(), cnt, c0, clen, o + c0);
    }
  });
}

template void pre_rule_fused<float>(const PreConfig&, const RuleConfig&, const float* const*, std::size_t,
                                    std::size_t, float*);
template void pre_rule_fused<double>(const PreConfig&, const RuleConfig&, const double* const*, std::size_t,
                                     std::size_t, double*);

}  // namespace cpu
}  // namespace pyagg
