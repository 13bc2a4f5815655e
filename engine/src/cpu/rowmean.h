// pyagg engine — CPU backend: row kernels shared by several files: the mean of
// a set of rows over a chunk of coordinates, clipping's scaling (internal header; distance.cpp: multi-krum, mda, nnm,
// bulyan-multikrum; chain.cpp: fused pre-aggregator + rule chains).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/reduce.h"

namespace pyagg {
namespace cpu {

// Row means. For 32 coordinates at a time, the sum over the selected rows is
// held in registers as explicit double vectors (reduce.h's RedUnit, the
// target's native width): per row and coordinate one widening load and one
// add. Same order as the definition: per coordinate, rows in the order of
// `sel`, in double, then / cnt, rounded to T once. out[c] for c in [0, len)
// is the mean of rows[sel[s]][c0 + c]. (Written as a scalar lane loop left to
// GCC's auto-vectoriser, the same arithmetic compiled to scalar shuffles
// where the function was inlined into some callers: 2x slower there.)
//
// ZeroStart: the sum starts at 0.0 and adds every row (bucketing's
// definition: 0.0 + x is x except for x = -0.0, which becomes +0.0); without
// it the sum starts at the first row's value (nnm, multi-krum, mda).
namespace rowmean_detail {
using reduce::RedUnit;
constexpr std::size_t kSetStep = 32;                                 // coordinates per step
constexpr std::size_t kSetUnits = kSetStep / reduce::kUnitDoubles;   // accumulator units per set
// mean_chunk hints each row's coordinates this far ahead to the prefetcher:
// with many rows (multi-krum at n = 100: 80) one step of all of them takes
// less than a memory latency, and more rows than the hardware prefetcher
// follows streams.
constexpr std::size_t kMeanAhead = 4 * kSetStep;

inline void store_unit(double* p, const RedUnit& v) { std::memcpy(p, &v, sizeof v); }
// One unit rounded to T and stored at p (any alignment).
inline void store_unit_as(double* p, const RedUnit& v) { store_unit(p, v); }
inline void store_unit_as(float* p, const RedUnit& v) {
  typedef float Half __attribute__((vector_size(reduce::kRedUnitBytes / 2)));
  const Half h = __builtin_convertvector(v, Half);
  std::memcpy(p, &h, sizeof h);
}
}  // namespace rowmean_detail

// finish_mean: 32 sums of cnt rows (kSetUnits units) -> 32 means, rounded to
// T once. For a power-of-two count the product by the reciprocal is the same
// number as the quotient (exact scaling) and ~10x cheaper than a division.
template <typename T>
inline void finish_mean(const reduce::RedUnit* a, std::size_t cnt, T* out) {
  using namespace rowmean_detail;
  const double dc = double(cnt);
  if ((cnt & (cnt - 1)) == 0) {
    const double inv = 1.0 / dc;
    for (std::size_t u = 0; u < kSetUnits; ++u) store_unit_as(out + u * reduce::kUnitDoubles, a[u] * inv);
  } else {
    for (std::size_t u = 0; u < kSetUnits; ++u) store_unit_as(out + u * reduce::kUnitDoubles, a[u] / dc);
  }
}

template <typename T, bool ZeroStart = false>
inline void mean_chunk(const T* const* rows, const std::size_t* sel, std::size_t cnt, std::size_t c0,
                       std::size_t len, T* out) {
  using namespace rowmean_detail;
  constexpr std::size_t W = reduce::kUnitDoubles;
  const double dc = double(cnt);
  const bool pow2 = (cnt & (cnt - 1)) == 0;
  const double inv = 1.0 / dc;
  std::size_t c = 0;
  for (; c + kSetStep <= len; c += kSetStep) {
    RedUnit a[kSetUnits];
    const T* r0 = rows[sel[0]] + c0 + c;
    for (std::size_t u = 0; u < kSetUnits; ++u) {
      const RedUnit v = reduce::load_unit(r0 + u * W);
      a[u] = ZeroStart ? RedUnit{} + v : v;  // 0.0 + x: bucketing's start
    }
    for (std::size_t s = 1; s < cnt; ++s) {
      const T* r = rows[sel[s]] + c0 + c;
      reduce::prefetch_span(r + kMeanAhead, kSetStep * sizeof(T));
      for (std::size_t u = 0; u < kSetUnits; ++u) a[u] += reduce::load_unit(r + u * W);
    }
    finish_mean(a, cnt, out + c);
  }
  for (; c < len; ++c) {
    double a = ZeroStart ? 0.0 + double(rows[sel[0]][c0 + c]) : double(rows[sel[0]][c0 + c]);
    for (std::size_t s = 1; s < cnt; ++s) a += double(rows[sel[s]][c0 + c]);
    out[c] = T(pow2 ? a * inv : a / dc);
  }
}

// Several row means over one chunk of coordinates, sharing the reads of G
// (nnm's n output rows, bulyan-multikrum's theta rounds, a fused nnm or
// bucketing chain): set k is rows idx[start[k] .. start[k+1]), summed in that
// order, and outs[k][c] for c in [0, len) is its mean at coordinate c0 + c,
// with mean_chunk<T, ZeroStart>'s arithmetic (same additions in the same
// order: same bits).
//
// Per step of 32 coordinates, every row in `used` (the rows any set names)
// is converted to double once into `tile` (row r at tile + 32 r: 25 KiB at
// n = 100, in L1) and its next step is hinted to the prefetcher; then the
// sets' sums read the tile, two sets at a time: 8 independent accumulator
// vectors, where one set's 4 leave the adder waiting on its latency. Per
// row and coordinate of a set this is one load and one add, instead of
// mean_chunk's load, conversion and add from G for every set.
// tile: nrows * 32 doubles (nrows > every index in idx).
namespace rowmean_detail {
// Sets summed together: two with AVX-512 (8 of its 32 registers), one where
// a set's units already fill half the register file (8 ymm, 16 xmm).
constexpr std::size_t kSetsTogether = kSetUnits <= 4 ? 2 : 1;

// K sets' sums over one step, from the tile, then their means into outs[0..K).
template <typename T, bool ZeroStart, std::size_t K>
inline void sum_sets(const double* tile, const std::size_t* idx, const std::size_t* start, T* const* outs,
                     std::size_t c) {
  RedUnit acc[K][kSetUnits];
  std::size_t cnt[K], both = ~std::size_t(0);
  for (std::size_t k = 0; k < K; ++k) {
    cnt[k] = start[k + 1] - start[k];
    both = cnt[k] < both ? cnt[k] : both;
    const double* t = tile + idx[start[k]] * kSetStep;
    for (std::size_t u = 0; u < kSetUnits; ++u) {
      const RedUnit v = reduce::load_unit(t + u * reduce::kUnitDoubles);
      acc[k][u] = ZeroStart ? RedUnit{} + v : v;  // 0.0 + x: bucketing's start
    }
  }
  std::size_t s = 1;
  for (; s < both; ++s)
    for (std::size_t k = 0; k < K; ++k) {
      const double* t = tile + idx[start[k] + s] * kSetStep;
      for (std::size_t u = 0; u < kSetUnits; ++u) acc[k][u] += reduce::load_unit(t + u * reduce::kUnitDoubles);
    }
  for (std::size_t k = 0; k < K; ++k) {
    for (std::size_t s2 = s; s2 < cnt[k]; ++s2) {
      const double* t = tile + idx[start[k] + s2] * kSetStep;
      for (std::size_t u = 0; u < kSetUnits; ++u) acc[k][u] += reduce::load_unit(t + u * reduce::kUnitDoubles);
    }
    finish_mean(acc[k], cnt[k], outs[k] + c);
  }
}
// How far ahead of the step being converted convert_step hints each row into
// L2 (besides its next step into L1). The sets' sums keep a step busy long
// enough that the next step's lines, hinted one step ahead only, were still
// on their way from memory when the conversion loaded them. A/B, new / old,
// alternating runs, same bits (AMD Zen 4 host, 2 threads, float32 unless
// said): n = 20, d = 1e7: a fused nnm > average chain 0.67, nnm alone 0.75,
// bulyan-multikrum 0.73; n = 20, d = 1e6: 0.63 / 0.73 / 0.85 (float64:
// 0.79 / 0.73 / 0.96); n = 100, d = 1e6: 0.93 / 0.93 / 0.89; in cache
// (d = 1e4, 1e5) within noise. 512 to 2048 bytes measured alike.
constexpr std::size_t kConvertLeadBytes = 1024;
// The used rows' coordinates [c, c + Units * kUnitDoubles) converted to
// double into the tile (row r at tile + r * step); their next step hinted
// into L1 and the step kConvertLeadBytes ahead into L2, within [0, end)
// (every used row has coordinates up to end).
template <std::size_t Units, typename T>
inline void convert_step(const T* const* rows, const std::size_t* used, std::size_t nused, std::size_t c,
                         std::size_t end, double* tile) {
  constexpr std::size_t W = reduce::kUnitDoubles, step = Units * W, lead = kConvertLeadBytes / sizeof(T);
  const bool next = c + 2 * step <= end, far = c + lead + step <= end;
  for (std::size_t u = 0; u < nused; ++u) {
    const std::size_t r = used[u];
    const T* x = rows[r] + c;
    if (next) reduce::prefetch_span(x + step, step * sizeof(T));
    if (far) reduce::prefetch_span_l2(x + lead, step * sizeof(T));
    double* t = tile + r * step;
    for (std::size_t v = 0; v < Units; ++v) store_unit(t + v * W, reduce::load_unit(x + v * W));
  }
}
}  // namespace rowmean_detail

template <typename T, bool ZeroStart = false>
inline void mean_sets_chunk(const T* const* rows, const std::size_t* used, std::size_t nused,
                            const std::size_t* idx, const std::size_t* start, std::size_t nsets, std::size_t c0,
                            std::size_t len, std::size_t end, T* const* outs, double* tile) {
  using namespace rowmean_detail;
  std::size_t c = 0;
  for (; c + kSetStep <= len; c += kSetStep) {
    convert_step<kSetUnits>(rows, used, nused, c0 + c, end, tile);
    std::size_t k = 0;
    for (; k + kSetsTogether <= nsets; k += kSetsTogether)
      sum_sets<T, ZeroStart, kSetsTogether>(tile, idx, start + k, outs + k, c);
    for (; k < nsets; ++k) sum_sets<T, ZeroStart, 1>(tile, idx, start + k, outs + k, c);
  }
  if (c < len)  // the last len % 32 coordinates
    for (std::size_t k = 0; k < nsets; ++k)
      mean_chunk<T, ZeroStart>(rows, idx + start[k], start[k + 1] - start[k], c0 + c, len - c, outs[k] + c);
}

// Prefix sharing (a trie) for sets that share their first rows, in index
// order (bulyan-multikrum's rounds: each round's set is the previous one
// less its best row and, at most, a few rows re-ranked). The sets are walked
// in lexicographic order of their index lists; set k resumes from the
// partial sum of the longest prefix it shares with the set before it (its
// lcp), kept in `saved` at that depth by the last set that summed it: the
// partial sum of a prefix is the same additions in the same order whatever
// set computes it, so every mean keeps mean_chunk's bits. One walk is a
// single chain of additions per unit: the step is 8 units (64 coordinates
// with AVX-512, 32 with AVX2; SSE2: 16 units of 32), 8 independent chains
// for the adder.
namespace rowmean_detail {
constexpr std::size_t kTrieUnits = kSetUnits > 8 ? kSetUnits : 8;  // >= 32 coordinates (SSE2: 16 units)
constexpr std::size_t kTrieStep = kTrieUnits * reduce::kUnitDoubles;
static_assert(kTrieStep % kSetStep == 0, "a trie step is whole set steps (finish_mean)");
}  // namespace rowmean_detail
// One walk of the trie program (MeanSets::trie), per step of kTrieStep
// coordinates: every used row converted to double into tile (row r at tile +
// r * kTrieStep), then the sets' sums; saved: (max set size + 1) *
// kTrieStep doubles.
struct TrieOp {
  std::size_t set, lcp, len;  // set id, depth it resumes from, its size
  std::size_t save0;          // its save flags: MeanSets::trie_save[save0 + depth], depth <= len
};
template <typename T, bool ZeroStart>
inline void mean_sets_trie_chunk(const T* const* rows, const std::size_t* used, std::size_t nused,
                                 const std::size_t* idx, const std::size_t* start, const TrieOp* ops,
                                 std::size_t nops, const unsigned char* save, std::size_t c0, std::size_t len,
                                 std::size_t end, T* const* outs, double* tile, double* saved) {
  using namespace rowmean_detail;
  constexpr std::size_t W = reduce::kUnitDoubles;
  std::size_t c = 0;
  for (; c + kTrieStep <= len; c += kTrieStep) {
    convert_step<kTrieUnits>(rows, used, nused, c0 + c, end, tile);
    for (std::size_t o = 0; o < nops; ++o) {
      const TrieOp& op = ops[o];
      const std::size_t* e = idx + start[op.set];
      const unsigned char* sv = save + op.save0;
      RedUnit acc[kTrieUnits];
      std::size_t p = op.lcp;
      if (p == 0) {
        const double* t = tile + e[0] * kTrieStep;
        for (std::size_t v = 0; v < kTrieUnits; ++v) {
          const RedUnit x = reduce::load_unit(t + v * W);
          acc[v] = ZeroStart ? RedUnit{} + x : x;  // 0.0 + x: bucketing's start
        }
        p = 1;
        if (sv[1])
          for (std::size_t v = 0; v < kTrieUnits; ++v) store_unit(saved + kTrieStep + v * W, acc[v]);
      } else {
        for (std::size_t v = 0; v < kTrieUnits; ++v) acc[v] = reduce::load_unit(saved + p * kTrieStep + v * W);
      }
      for (; p < op.len; ++p) {
        const double* t = tile + e[p] * kTrieStep;
        for (std::size_t v = 0; v < kTrieUnits; ++v) acc[v] += reduce::load_unit(t + v * W);
        if (sv[p + 1])
          for (std::size_t v = 0; v < kTrieUnits; ++v) store_unit(saved + (p + 1) * kTrieStep + v * W, acc[v]);
      }
      for (std::size_t h = 0; h < kTrieStep; h += kSetStep)
        finish_mean(acc + h / W, op.len, outs[op.set] + c + h);
    }
  }
  if (c < len)  // the last len % kTrieStep coordinates
    for (std::size_t o = 0; o < nops; ++o) {
      const std::size_t k = ops[o].set;
      mean_chunk<T, ZeroStart>(rows, idx + start[k], start[k + 1] - start[k], c0 + c, len - c, outs[k] + c);
    }
}

// The sets of one mean_sets_chunk call, built once per rule call: sets in CSR
// form and the rows they name (each once, increasing).
struct MeanSets {
  std::vector<std::size_t> idx, start{0}, used;
  std::size_t nrows = 0;  // every index < nrows: a tile holds nrows steps of doubles (tile_doubles)
  void add(const std::size_t* s, std::size_t cnt) {
    idx.insert(idx.end(), s, s + cnt);
    start.push_back(idx.size());
  }
  // Whether the sets share rows enough for the tile: each set row read from
  // the tile saves a conversion but each used row costs a store and a load
  // (bucketing's disjoint sets, or nnm at n = 20 with two distinct sets: the
  // tile was ~17% slower there; nnm at n = 100 has 21 sets of 80 of 100 rows).
  bool shared = false;
  // The trie program (mean_sets_trie_chunk), when the sets' shared prefixes
  // save at least a quarter of the additions and its tile fits L1
  // (bulyan-multikrum's rounds at n = 20: 95 -> 60 row additions per
  // coordinate; nnm's sets rarely share prefixes).
  std::vector<TrieOp> trie;
  std::vector<unsigned char> trie_save;
  std::size_t trie_depth = 0;  // the largest set size
  std::size_t additions = 0;   // per coordinate, by the path chunk() takes (after finish)
  // After the last add: the rows any set names, and the trie if worth it.
  // by_frequency: each set's rows reordered, rows that more sets name first
  // (ties by index), before anything else; every path then sums them in that
  // order. Nested sets then share their prefixes in the trie: bulyan-multikrum's
  // rounds mostly are (each removes the best row; the scores' updates reorder
  // a few), and in index order they share few (additions per coordinate,
  // f = n/5 with far rows: n = 20, 55 -> 26; n = 100, ~1400 -> 157 of 2813).
  // This changes the order of the double sums: the caller uses such sets
  // only where every sum is exact (sums_exact), so the bits are index order's.
  void finish(std::size_t n, bool by_frequency = false) {
    nrows = n;
    std::vector<std::size_t> named_by(n, 0);  // how many sets name each row
    for (std::size_t r : idx) ++named_by[r];
    if (by_frequency)
      for (std::size_t k = 0; k + 1 < start.size(); ++k)
        std::sort(idx.begin() + std::ptrdiff_t(start[k]), idx.begin() + std::ptrdiff_t(start[k + 1]),
                  [&](std::size_t a, std::size_t b) { return named_by[a] != named_by[b] ? named_by[a] > named_by[b] : a < b; });
    used.clear();
    for (std::size_t r = 0; r < n; ++r)
      if (named_by[r]) used.push_back(r);
    shared = idx.size() >= 3 * used.size();
    trie.clear();
    trie_save.clear();
    additions = idx.size() - size();
    if (shared) build_trie();
  }
  std::size_t size() const { return start.size() - 1; }
  std::size_t largest() const {
    std::size_t m = 0;
    for (std::size_t k = 0; k + 1 < start.size(); ++k) m = std::max(m, start[k + 1] - start[k]);
    return m;
  }
  std::size_t tile_doubles() const {
    if (!trie.empty()) return (nrows + trie_depth + 1) * rowmean_detail::kTrieStep;
    return shared ? nrows * 32 : 0;
  }
  // end: every row has coordinates up to end (the hints stay below it).
  template <typename T, bool ZeroStart = false>
  void chunk(const T* const* rows, std::size_t c0, std::size_t len, std::size_t end, T* const* outs,
             double* tile) const {
    if (!trie.empty()) {
      mean_sets_trie_chunk<T, ZeroStart>(rows, used.data(), used.size(), idx.data(), start.data(), trie.data(),
                                         trie.size(), trie_save.data(), c0, len, end, outs, tile,
                                         tile + nrows * rowmean_detail::kTrieStep);
      return;
    }
    if (shared) {
      mean_sets_chunk<T, ZeroStart>(rows, used.data(), used.size(), idx.data(), start.data(), size(), c0, len, end,
                                    outs, tile);
      return;
    }
    for (std::size_t k = 0; k < size(); ++k)
      mean_chunk<T, ZeroStart>(rows, idx.data() + start[k], start[k + 1] - start[k], c0, len, outs[k]);
  }

 private:
  // Sets in lexicographic order of their index lists; each one's lcp with
  // the set before it in that order (the longest prefix it shares with any
  // earlier set). A set saves its partial sum at every depth p in (its lcp,
  // its size] that some later set resumes from: the last set to do so before
  // that set started below p and shares its first p rows (every set in
  // between resumed at depth >= p), so the saved sum is the right prefix.
  void build_trie() {
    const std::size_t ns = size();
    trie_depth = 0;
    std::vector<std::size_t> order(ns);
    for (std::size_t k = 0; k < ns; ++k) order[k] = k;
    auto at = [&](std::size_t k) { return idx.begin() + std::ptrdiff_t(start[k]); };
    auto len = [&](std::size_t k) { return start[k + 1] - start[k]; };
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return std::lexicographical_compare(at(a), at(a) + std::ptrdiff_t(len(a)), at(b), at(b) + std::ptrdiff_t(len(b)));
    });
    std::vector<std::size_t> lcp(ns, 0);
    std::size_t adds = 0, total = 0;
    for (std::size_t o = 0; o < ns; ++o) {
      const std::size_t k = order[o];
      total += len(k) - 1;
      if (o > 0) {
        const std::size_t q = order[o - 1], m = std::min(len(q), len(k));
        while (lcp[o] < m && at(q)[std::ptrdiff_t(lcp[o])] == at(k)[std::ptrdiff_t(lcp[o])]) ++lcp[o];
      }
      adds += len(k) - std::max<std::size_t>(lcp[o], 1);
      trie_depth = std::max(trie_depth, len(k));
    }
    // The walk keeps a single chain of additions per unit: it needs the
    // trie's wider step, whose tile and saved sums should stay in L1 (n = 100:
    // 91 KiB; measured there, a trie saving ~half the additions was no faster
    // than summing two sets at a time from a 25 KiB tile; n = 20: 18 KiB,
    // 5-10% faster). So: in L1, it must save at least a quarter of the
    // additions; in L2 (up to 512 KiB), seven eighths (bulyan-multikrum's
    // rounds by frequency at n = 100: 157 of 2813, 0.74x the rule's time).
    const std::size_t bytes = (nrows + trie_depth + 1) * rowmean_detail::kTrieStep * sizeof(double);
    const bool in_l1 = bytes <= (std::size_t(32) << 10);
    if ((in_l1 ? 4 * adds > 3 * total : 8 * adds > total) || bytes > (std::size_t(512) << 10)) {
      trie_depth = 0;
      return;
    }
    additions = adds;
    // resumed[p]: some set after the current one resumes at depth p
    std::vector<unsigned char> later(trie_depth + 1, 0);
    trie.resize(ns);
    trie_save.assign(ns * (trie_depth + 1), 0);
    for (std::size_t o = ns; o-- > 0;) {
      const std::size_t k = order[o];
      trie[o] = TrieOp{k, lcp[o], len(k), o * (trie_depth + 1)};
      for (std::size_t p = lcp[o] + 1; p <= len(k); ++p) trie_save[o * (trie_depth + 1) + p] = later[p];
      later[lcp[o]] = 1;
    }
  }
};

// Finishes ms (index order) and returns mean_sets_chunks' exact_alt for it:
// for float rows, `freq` becomes the same sets finished by frequency, used
// when its trie needs at most a quarter of ms's additions (the exactness test
// reads each chunk once more); else null (double rows: sums_exact is float's,
// and freq stays empty).
template <typename T>
const MeanSets* finish_sets(MeanSets& ms, MeanSets& freq, std::size_t n) {
  if (std::is_same<T, float>::value) {
    freq = ms;
    freq.finish(n, true);
  }
  ms.finish(n);
  if (!std::is_same<T, float>::value) return nullptr;
  return !freq.trie.empty() && 4 * freq.additions <= ms.additions ? &freq : nullptr;
}

// Whether every sum of at most kmax of the float values rows[used[.]][c0 ..
// c0 + len) is exact in double, so that any order of the additions gives the
// same bits. Each nonzero value is an integer multiple of 2^(e_min - 150)
// (e_min: the smallest biased exponent among the nonzero values, 1 for
// subnormals) and every partial sum is below kmax * 2^(e_max - 126); exact
// when that is at most 2^53 multiples: e_max - e_min <= 29 - ceil(log2 kmax).
// Any NaN or infinity: false (a NaN's payload depends on the order).
inline bool sums_exact(const float* const* rows, const std::size_t* used, std::size_t nused, std::size_t c0,
                       std::size_t len, std::size_t kmax) {
  std::uint32_t emax = 0, emin = 0xFF;
  for (std::size_t u = 0; u < nused; ++u) {
    const float* x = rows[used[u]] + c0;
    std::uint32_t hi = 0, lo = 0xFF;
    for (std::size_t c = 0; c < len; ++c) {
      std::uint32_t bits;
      std::memcpy(&bits, x + c, sizeof bits);
      const std::uint32_t ex = (bits >> 23) & 0xFF;
      const std::uint32_t nz = (bits & 0x7FFFFFFFu) != 0;
      hi = ex > hi ? ex : hi;
      const std::uint32_t el = nz ? (ex == 0 ? 1u : ex) : 0xFFu;  // zeros do not count
      lo = el < lo ? el : lo;
    }
    emax = std::max(emax, hi);
    emin = std::min(emin, lo);
  }
  if (emax == 0xFF) return false;
  if (emin == 0xFF) return true;  // all zeros
  std::uint32_t lg = 0;
  while ((std::size_t(1) << lg) < kmax) ++lg;
  return lg <= 29 && emax - emin <= 29 - lg;
}

// The sets' means over coordinates [b, e) in chunks of `chunk`, in parallel
// (nthreads): for chunk [c0, c0 + len) in thread t, set k's means go to
// where(k, c0, t), then done(c0, len, t) runs in the same thread. Per-thread
// tiles and pointer arrays are allocated before the parallel region. Each
// coordinate's sums are fixed: any schedule gives the same bits. The schedule
// is static: it hands each thread the same coordinates as the static tile
// schedule of the coordinate rule that reads the means next
// (bulyan-multikrum, a fused chain), so they are read from the thread's own
// cache. ZeroStart: bucketing's sums (mean_chunk).
// exact_alt (may be null; float rows only): the same sets, rows in another
// order (MeanSets::finish by_frequency); a chunk whose sums are all exact
// (sums_exact) is summed with it, any other with ms: the same bits, fewer
// additions where its trie shares more.
template <typename T, bool ZeroStart = false, typename Where, typename Done>
void mean_sets_chunks(const MeanSets& ms, const T* const* rows, std::size_t b, std::size_t e, std::size_t chunk,
                      int nthreads, Where&& where, Done&& done, const MeanSets* exact_alt = nullptr) {
  const std::size_t nsets = ms.size();
  const std::size_t tile = std::max(ms.tile_doubles(), exact_alt ? exact_alt->tile_doubles() : 0);
  const std::size_t kmax = exact_alt ? exact_alt->largest() : 0;
  std::vector<double> tiles(std::size_t(nthreads) * tile);
  std::vector<T*> outp(std::size_t(nthreads) * nsets);
  const std::size_t nchunks = (e - b + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (std::ptrdiff_t ch = 0; ch < std::ptrdiff_t(nchunks); ++ch) {
    const std::size_t c0 = b + std::size_t(ch) * chunk, len = std::min(chunk, e - c0);
    const std::size_t t = std::size_t(reduce::thread_num());
    T** o = outp.data() + t * nsets;
    for (std::size_t k = 0; k < nsets; ++k) o[k] = where(k, c0, t);
    const MeanSets* use = &ms;
    if constexpr (std::is_same<T, float>::value)
      if (exact_alt && sums_exact(rows, exact_alt->used.data(), exact_alt->used.size(), c0, len, kmax))
        use = exact_alt;
    use->chunk<T, ZeroStart>(rows, c0, len, e, o, tiles.data() + t * tile);
    done(c0, len, t);
  }
}

// o = (T)((double)x * s), element-wise (o may equal x: in-place rescaling):
// clipping's arithmetic (preagg.cpp, chain.cpp).
template <typename T>
inline void scale_block(const T* x, T* o, std::size_t len, double s) {
  for (std::size_t j = 0; j < len; ++j) o[j] = static_cast<T>(static_cast<double>(x[j]) * s);
}

// Per-row clipping scales (preagg.cpp): scale[i] < 1 -> row i becomes
// scale_block(x_i, scale[i]); otherwise it is copied. Same norms and decisions
// as clipping(); writes nothing else.
template <typename T>
void clipping_scales(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, double tau, double* scale);

// The average of the rows clipping (scale) or zeroing (keep) would write,
// bit for bit as average() of that output (coordinate.cpp; chain.cpp's fused
// clipping/zeroing > average). scale / keep may be null.
template <typename T>
void average_scaled(const T* const* rows, std::size_t n, std::size_t d, const double* scale,
                    const unsigned char* keep, T* out);

// out = T(sum_t a[t] x_t) (post = 0, den = 1), T(0.0 + post * sum_t a[t] x_t)
// or T(sum_t a[t] x_t / den), the sum in double in row order (coordinate.cpp;
// the geometric median's, centered clipping's and next.cpp's combination pass).
template <typename T>
void weighted_sum(const T* const* rows, const double* a, std::size_t cnt, std::size_t d, double post, double den,
                  T* out);

// Bucketing's means (preagg.cpp): output row b = the mean of rows [b*s,
// min(n, (b+1)*s)), 0.0 + the rows in order in double, divided by the
// bucket's size, rounded to T (coordinate.cpp).
template <typename T>
void bucket_means(const T* const* rows, std::size_t n, std::size_t d, std::size_t s, T* out);

// The zeroing pre-aggregator's decisions (next.cpp): keep[i] = 1 -> row i is
// copied, 0 -> it becomes a zero row. Same norms and decisions as zeroing_pre().
template <typename T>
std::vector<unsigned char> zeroing_keep_rows(const T* const* rows, std::size_t n, std::size_t d, double tau,
                                             int norm_order);

}  // namespace cpu
}  // namespace pyagg
