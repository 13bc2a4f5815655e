// pyagg engine — selection phases of the distance-based rules, shared by the
// CPU and CUDA backends (engine/src/common: the one place both include).
//
// Internal header (engine/src/cpu/distance.cpp, engine/cuda/backend.cu and
// tests/cpp/test_distance.cpp).
// Everything here works on the n*n distance matrix D produced by
// cpu::pairwise_sqdist and nothing else: no gradient data, no element type, no
// OpenMP. That is what makes each rule's selection testable on hand-written
// matrices, independently of the distance pass and of the coordinate phase.
//
// Conventions shared by every function (shared/spec/rules.md):
//   - D[i*n+j] is the squared L2 distance of rows i and j; a non-finite row i
//     (any NaN/inf in the data) has D[i*n+j] = D[j*n+i] = +inf for every j,
//     including D[i*n+i] = +inf; a finite row has D[i*n+i] = 0. So "row i is
//     finite" is read off the diagonal: D[i*n+i] == 0.
//   - Rows are ranked by the key (row non-finite?, value, index): finite rows
//     first, then by score/distance, ties by the lowest row index. A
//     non-finite row is therefore only ever chosen when there are not enough
//     finite rows (more non-finite rows than the rule tolerates).
//   - Returned index sets that are summed are sorted by increasing index (the
//     order in which rows are summed).
// Allocation (std::vector) may throw std::bad_alloc: call these outside any
// OpenMP parallel region (the engine catches it at its door).
#pragma once

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace pyagg {
namespace selection {

inline bool row_is_finite(const double* D, std::size_t n, std::size_t i) { return D[i * n + i] == 0.0; }

// Strict weak order on rows by (non-finite?, value, index).
struct RankLess {
  const double* D;
  std::size_t n;
  const double* value;  // value[i] for row i
  bool operator()(std::size_t a, std::size_t b) const {
    const bool fa = row_is_finite(D, n, a), fb = row_is_finite(D, n, b);
    if (fa != fb) return fa;
    if (value[a] != value[b]) return value[a] < value[b];
    return a < b;
  }
};

// For each row i, the other rows j != i sorted by (D[i][j], j): the order in
// which Krum takes neighbours. nb[i*(n-1) + t] is the t-th nearest of i.
// Sorting once lets every Bulyan round score a row in O(n) by walking this list
// and skipping removed rows; the taken distances come out in ascending order,
// the order in which they are summed.
inline std::vector<std::uint32_t> neighbour_order(const double* D, std::size_t n) {
  std::vector<std::uint32_t> nb(n * (n > 0 ? n - 1 : 0));
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t* row = nb.data() + i * (n - 1);
    std::size_t t = 0;
    for (std::size_t j = 0; j < n; ++j)
      if (j != i) row[t++] = static_cast<std::uint32_t>(j);
    const double* Di = D + i * n;
    std::sort(row, row + (n - 1), [Di](std::uint32_t a, std::uint32_t b) {
      return Di[a] != Di[b] ? Di[a] < Di[b] : a < b;
    });
  }
  return nb;
}

// Krum scores of the rows still `active` (active[i] != 0), with k neighbours
// taken among the active rows: score[i] = sum of the k smallest D[i][j],
// j active, j != i, added in ascending order. k <= 0 -> every score is 0.
// Inactive rows get +inf.
inline void krum_scores(const double* D, std::size_t n, const std::vector<std::uint32_t>& nb,
                        const std::vector<unsigned char>& active, std::ptrdiff_t k, double* score) {
  for (std::size_t i = 0; i < n; ++i) {
    if (!active[i]) {
      score[i] = std::numeric_limits<double>::infinity();
      continue;
    }
    double s = 0.0;
    std::ptrdiff_t taken = 0;
    const std::uint32_t* row = nb.data() + i * (n - 1);
    for (std::size_t t = 0; t + 1 < n && taken < k; ++t) {
      const std::uint32_t j = row[t];
      if (!active[j]) continue;
      s += D[i * n + j];
      ++taken;
    }
    score[i] = s;
  }
}

// The active rows ranked by (non-finite?, score, index), best first.
inline std::vector<std::size_t> rank_active(const double* D, std::size_t n, const std::vector<unsigned char>& active,
                                            const double* score) {
  std::vector<std::size_t> order;
  for (std::size_t i = 0; i < n; ++i)
    if (active[i]) order.push_back(i);
  std::sort(order.begin(), order.end(), RankLess{D, n, score});
  return order;
}

// Krum scores on all n rows with k = n-f-2 neighbours (n >= 2f+3).
inline std::vector<double> krum_scores_all(const double* D, std::size_t n, std::size_t f) {
  const auto nb = neighbour_order(D, n);
  std::vector<unsigned char> active(n, 1);
  std::vector<double> score(n);
  krum_scores(D, n, nb, active, std::ptrdiff_t(n) - std::ptrdiff_t(f) - 2, score.data());
  return score;
}

// Krum / Multi-Krum: the m rows with the best Krum scores (k = n-f-2), in
// rank order (best first). Krum is m = 1.
inline std::vector<std::size_t> krum_select(const double* D, std::size_t n, std::size_t f, std::size_t m) {
  const auto score = krum_scores_all(D, n, f);
  std::vector<unsigned char> active(n, 1);
  auto order = rank_active(D, n, active, score.data());
  order.resize(m);
  return order;
}

// Bulyan's selection phase: theta = n-2f rounds; each round scores the r
// remaining rows with k = r-f-2 neighbours among them and moves the best one
// to the selection. Returns the theta selected rows in selection order.
inline std::vector<std::size_t> bulyan_select(const double* D, std::size_t n, std::size_t f) {
  const std::size_t theta = n - 2 * f;
  const auto nb = neighbour_order(D, n);
  std::vector<unsigned char> active(n, 1);
  std::vector<double> score(n);
  std::vector<std::size_t> sel;
  for (std::size_t t = 0; t < theta; ++t) {
    const std::size_t r = n - t;
    krum_scores(D, n, nb, active, std::ptrdiff_t(r) - std::ptrdiff_t(f) - 2, score.data());
    std::size_t best = n;
    for (std::size_t i = 0; i < n; ++i)
      if (active[i] && (best == n || RankLess{D, n, score.data()}(i, best))) best = i;
    assert(best < n);
    sel.push_back(best);
    active[best] = 0;
  }
  return sel;
}

// AggregaThor's Bulyan over Multi-Krum, selection phase (shared/spec/rules.md,
// "exactly as its native op computes it"): Krum scores are computed ONCE on
// all n rows with k = n-f-2 neighbours (neighbour_order: nearest first, ties
// by index); P[i][j] = D[i][j] when j is one of i's k neighbours, else 0
// ("pruned"). theta = n-2f-2 rounds; round t ranks the remaining rows by
// (non-finite?, score, index), contributes its (m-t) best rows, then removes
// the single best row r and subtracts P[i][r] from every remaining score
// (scores are never recomputed; an infinite score stays infinite, so inf - inf
// never happens). Returns theta sets, each sorted by increasing index
// (summation order). O(n^2 log n) for the neighbour lists + O(theta n log n).
inline std::vector<std::vector<std::size_t>> bulyan_multikrum_select(const double* D, std::size_t n, std::size_t f,
                                                                     std::size_t m) {
  const std::size_t theta = n - 2 * f - 2;
  const std::size_t k = n - f - 2;
  assert(m >= theta && m <= k);
  const auto nb = neighbour_order(D, n);
  std::vector<unsigned char> active(n, 1);
  std::vector<double> score(n);
  krum_scores(D, n, nb, active, std::ptrdiff_t(k), score.data());
  // neighbour[i*n+j] != 0 <=> j is one of row i's k Krum neighbours.
  std::vector<unsigned char> neighbour(n * n, 0);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t t = 0; t < k; ++t) neighbour[i * n + nb[i * (n - 1) + t]] = 1;
  std::vector<std::vector<std::size_t>> sets;
  for (std::size_t t = 0; t < theta; ++t) {
    const auto order = rank_active(D, n, active, score.data());
    std::vector<std::size_t> set(order.begin(), order.begin() + std::ptrdiff_t(m - t));
    std::sort(set.begin(), set.end());
    sets.push_back(std::move(set));
    const std::size_t r = order[0];
    active[r] = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (active[i] && neighbour[i * n + r] && score[i] != std::numeric_limits<double>::infinity())
        score[i] -= D[i * n + r];
  }
  return sets;
}

// Diameter of a set of rows (max D over all pairs, diagonal included, so a
// single non-finite row has diameter +inf).
inline double diameter(const double* D, std::size_t n, const std::vector<std::size_t>& s) {
  double dm = 0.0;
  for (std::size_t a = 0; a < s.size(); ++a)
    for (std::size_t b = a; b < s.size(); ++b) dm = std::max(dm, D[s[a] * n + s[b]]);
  return dm;
}

// Nearest-neighbour mixing, selection for row i: the n-f rows j ranked by
// (row j non-finite?, D[i][j], j); row i itself included when finite.
// Returned sorted by increasing index.
inline std::vector<std::size_t> nnm_select(const double* D, std::size_t n, std::size_t f, std::size_t i) {
  std::vector<std::size_t> order(n);
  for (std::size_t j = 0; j < n; ++j) order[j] = j;
  std::sort(order.begin(), order.end(), RankLess{D, n, D + i * n});
  order.resize(n - f);
  std::sort(order.begin(), order.end());
  return order;
}

// MDA: among all subsets of s = n-f rows, the one with the smallest diameter;
// ties -> the lexicographically smallest sorted index list. Exact: depth-first
// enumeration in lexicographic order with branch and bound. The bound starts
// at the best diameter of n greedy candidates (row i and its s-1 nearest), so
// a partial subset is cut as soon as its diameter exceeds that bound, or
// equals/exceeds the best complete subset already found (a later subset of
// equal diameter is lexicographically larger). The bound only prunes, it never
// decides: the result is the exact optimum. Returns the subset sorted.
// `nodes` (optional) receives the number of search nodes visited.
inline std::vector<std::size_t> mda_select(const double* D, std::size_t n, std::size_t f,
                                           std::uint64_t* nodes = nullptr) {
  const std::size_t s = n - f;
  assert(s >= 1 && s <= n);
  // Upper bound from greedy candidates (any subset's diameter bounds the
  // optimum): row i with its s-1 nearest rows, for the few rows i whose s-th
  // nearest distance (the "radius" of that candidate) is smallest; O(n^2) +
  // O(s^2) per candidate, so the bound stays cheap for large n.
  constexpr std::size_t kSeeds = 4;
  std::vector<std::pair<double, std::size_t>> radius(n);
  std::vector<double> row(n);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < n; ++j)
      row[j] = row_is_finite(D, n, j) ? D[i * n + j] : std::numeric_limits<double>::infinity();
    std::nth_element(row.begin(), row.begin() + std::ptrdiff_t(s - 1), row.end());
    radius[i] = {row[s - 1], i};
  }
  const std::size_t nseeds = std::min(kSeeds, n);
  std::partial_sort(radius.begin(), radius.begin() + std::ptrdiff_t(nseeds), radius.end());
  double bound = std::numeric_limits<double>::infinity();
  for (std::size_t q = 0; q < nseeds; ++q)
    bound = std::min(bound, diameter(D, n, nnm_select(D, n, f, radius[q].second)));

  std::vector<std::size_t> c(s), best;
  std::vector<double> dm(s + 1, 0.0);  // dm[t]: diameter of c[0..t-1]
  bool have = false;
  double best_d = bound;
  std::uint64_t visited = 0;
  std::size_t t = 0;       // depth: number of fixed indices
  std::size_t next = 0;    // candidate for c[t]
  for (;;) {
    if (t == s) {  // complete subset (only reached when it beats the incumbent)
      best.assign(c.begin(), c.end());
      best_d = dm[s];
      have = true;
      // backtrack
      --t;
      next = c[t] + 1;
      continue;
    }
    if (next + (s - t) > n) {  // not enough rows left for the remaining slots
      if (t == 0) break;
      --t;
      next = c[t] + 1;
      continue;
    }
    ++visited;
    const std::size_t j = next;
    double d = std::max(dm[t], D[j * n + j]);
    for (std::size_t u = 0; u < t && d <= best_d; ++u) d = std::max(d, D[j * n + c[u]]);
    if (d > best_d || (have && d >= best_d)) {
      ++next;  // prune this branch; try the next candidate at this depth
      continue;
    }
    c[t] = j;
    dm[t + 1] = d;
    ++t;
    next = j + 1;
  }
  if (nodes) *nodes = visited;
  assert(have);
  return best;
}

}  // namespace selection
}  // namespace pyagg
