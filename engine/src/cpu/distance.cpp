// pyagg engine — CPU (OpenMP) backend: distance-based rules.
//
// Exact definitions: shared/spec/rules.md. Selection phases (pure functions of
// the distance matrix): common/select_distance.h. Inputs are validated by the dispatch
// point (engine/src/rules.cpp): n >= the rule's bound, d >= 1, m resolved.
//
// Rules, papers and resilience bounds
// -----------------------------------
//  krum (f)             Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine
//                       Learning with Adversaries: Byzantine Tolerant Gradient
//                       Descent", NeurIPS 2017.            n >= 2f+3.
//      k = n-f-2 neighbours; score_i = sum of the k smallest D[i][j], j != i,
//      added in ascending order; output = copy of the row with the lowest
//      score (ties -> lowest index).
//  multi-krum (f, m)    Damaskinos, El Mhamdi, Guerraoui, Guirguis, Rouault,
//                       "AggregaThor: Byzantine Machine Learning via Robust
//                       Gradient Aggregation", SysML 2019.  n >= 2f+3, 1 <= m <= n-f.
//      Krum scores computed once on all n rows; output = mean of the m rows
//      with the lowest scores (ties by index).
//  bulyan (f)           El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability
//                       of Distributed Learning in Byzantium", ICML 2018.
//                                                           n >= 4f+3.
//      theta = n-2f rounds; each round computes Krum scores on the r remaining
//      rows with k = r-f-2 neighbours among them (k <= 0 -> every score 0) and
//      moves the best (lowest score, ties -> lowest index) to the selection;
//      then out = averaged_median(selected rows in increasing index order,
//      theta, d, beta = theta-2f) (coordinate.cpp).
//  bulyan-multikrum (f, m)  AggregaThor (SysML 2019), Bulyan over Multi-Krum.
//                                                           n >= 4f+3, n-2f-2 <= m <= n-f-2.
//      Exactly as AggregaThor's native op: Krum scores computed ONCE on all n
//      rows (k = n-f-2), distances outside each neighbour set pruned to 0;
//      theta = n-2f-2 rounds; round t contributes the mean of the (m-t)
//      best-scored remaining rows, then the single best r is removed and its
//      pruned distance subtracted from every remaining score (no re-scoring;
//      common/select_distance.h). The theta contribution rows are materialised in a
//      buffer of T (theta x min(d, 2^20) at a time) and out =
//      averaged_upper_median(contributions, theta, d, beta = theta-2f): around
//      the UPPER median (element theta//2).
//  mda (f)              El Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, "Fast
//                       and Robust Distributed Learning in High Dimension",
//                       SRDS 2020 (minimum-diameter averaging). n >= 2f+1.
//      the subset S of n-f rows with the smallest diameter max_{i,j in S}
//      D[i][j]; ties -> the lexicographically smallest sorted index list;
//      output = mean of S. Exact: lexicographic enumeration with branch and
//      bound (the dispatcher refuses C(n, f) > max_subsets).
//  nnm (f), pre-aggregator  Allouah, Farhadkhani, Guerraoui, Gupta, Pinot,
//                       Stephan, "Fixing by Mixing: A Recipe for Optimal
//                       Byzantine ML under Heterogeneity", AISTATS 2023. n > f.
//      out row i = mean of the n-f rows j ranked by (row j non-finite?,
//      D[i][j], j): finite rows first, nearest first, ties by index (row i
//      itself included, D[i][i] = 0, when finite). A non-finite row i becomes
//      the mean of the n-f lowest-index finite rows.
//
// Common semantics
// ----------------
//  - D = pairwise_sqdist: D[i*n+j] = sum_k (x_ik - x_jk)^2 in the exact
//    difference form (no Gram-form cancellation), from ONE blocked pass over
//    the data. A non-finite row (any NaN/inf, detected in the same pass) is
//    infinitely far from everything: D = +inf to every row, D[i][i] = +inf;
//    D[i][i] = 0 for a finite row. Symmetric.
//  - Non-finite rows are never selected and never mixed in: every ranking key
//    is (row non-finite?, score or distance, index). With at most f
//    non-finite rows every output is finite; with more, finite rows still come
//    first and a non-finite row is taken only when a rule runs out of finite
//    ones (the output is then non-finite: the honest answer). Ties are broken
//    by the lowest row index.
//  - A mean of selected rows is summed in double, in increasing row-index
//    order, divided by the count in double and rounded to T once.
//  - Every rule computes D once and reuses it (Bulyan's rounds never
//    recompute distances).
//
// Distance pass: tiling and determinism
// -------------------------------------
//  One pass over G, in the exact difference form sum_k (x_ik - x_jk)^2.
//  - Blocks: the d coordinates are cut into the fixed blocks of
//    cpu::kReduceBlock coordinates (independent of the thread count); OpenMP
//    threads take whole blocks (dynamic schedule: a descheduled thread does not
//    stall the others; which thread runs a block changes no bit).
//  - Tiles: inside a block, coordinates go in tiles of `tile` coordinates (a
//    power of two in 64..1024 chosen from n and sizeof(T) only: the n rows'
//    slices of a tile, n*tile*sizeof(T) <= 24 KiB, sit in L1; 256 for n=20
//    float32). The rows' next tile is prefetched while this one is computed.
//  - Pairs: for every pair (i < j) of the tile, kLanes = 32 float / 16 double
//    independent accumulator lanes in T (coordinate c of the tile -> lane
//    c % kLanes; two 64-byte vector-extension values) sum (x_ic - x_jc)^2;
//    four rows j..j+3 are processed against x_i together (x_i loaded once,
//    8 independent accumulator chains; two rows without AVX-512). Every lane
//    is a sequential sum in a fixed order: the compiler vectorises it without
//    -ffast-math, and the bits do not depend on the vector width.
//  - Folds: at the end of each tile the pair's lanes are folded into double
//    (fixed tree, fold_to8: 32 float lanes -> 8 double lanes) and added to the
//    pair's 8 double lanes for the block; at the end of the block those are
//    folded to one double (fold_8). Block partials [nblocks][npairs] are then
//    combined in block order by one thread. Same input -> same bits, whatever
//    the thread count or timing.
//  - Non-finite rows, from the same pass: a finite block sum of a pair proves
//    both rows finite on that block (a NaN/inf coordinate makes every sum it
//    enters NaN/inf); only a row none of whose sums is finite is scanned again.
//  - float input whose pair sum overflows float although both rows are finite
//    (values near the float max) is recomputed in double for that block, so D
//    is +inf only for non-finite rows (or a distance beyond the double range).
//  Scratch: nblocks*npairs partial doubles (0.5% of G for n=20 float32) and
//  npairs*8 doubles per thread.
//
// Means of selected rows: per chunk of 32 coordinates the running sums sit in
// registers (double), rows added in increasing index order; parallel over
// chunks of coordinates (per-coordinate order fixed: deterministic).
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
#include "common/select_distance.h"
#include "cpu/reduce.h"

// The 64-byte vector-extension values below never cross a function boundary
// outside this file (internal linkage, inlined): GCC's note that their ABI
// differs without AVX-512 does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace pyagg {
namespace cpu {
namespace {

// Accumulator lanes of the distance kernel: 128 bytes (32 floats, 16
// doubles), held as two 64-byte GCC/Clang vector-extension values `lo`
// (lanes 0..W-1) and `hi` (lanes W..2W-1). The vector extension only states
// "lane-wise": the compiler maps it onto zmm, 2 ymm or 4 xmm registers, with
// the same result bits on every target.
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(64)));
  typedef float H __attribute__((vector_size(32)));  // half of V
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
};
typedef double VD __attribute__((vector_size(64)));  // 8 double lanes

template <typename T>
constexpr int kVecLen = int(64 / sizeof(T));  // W
template <typename T>
constexpr int kLanes = 2 * kVecLen<T>;  // L
constexpr int kDoubleLanes = 8;

template <typename T, typename Vec = typename Simd<T>::V>
inline Vec load_vec(const T* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);  // unaligned load
  return v;
}
inline void store_vd(double* p, const VD& v) { std::memcpy(p, &v, sizeof v); }

// Rows processed together against one row x_i in the distance kernel: four
// pairs = 8 accumulator vectors of 64 bytes, i.e. 8 zmm registers with AVX-512
// (32 registers) but 16 ymm with AVX2 (16 registers): two pairs there.
#if defined(__AVX512F__)
constexpr int kPairGroup = 4;
#else
constexpr int kPairGroup = 2;
#endif

// Coordinates per tile: the n rows' slices of a tile fit a ~24 KiB L1 budget.
// Depends on n and sizeof(T) only (never on the thread count).
template <typename T>
std::size_t distance_tile(std::size_t n) {
  const std::size_t budget = 24 * 1024 / sizeof(T);
  std::size_t tile = 1024;
  while (tile > 64 && tile * n > budget) tile /= 2;
  return tile;  // power of two >= 64 = 2 * kLanes<float>: divides kReduceBlock
}

// End-of-tile fold of a pair's L lanes acc[0..L-1] (acc[0..W-1] = lo,
// acc[W..2W-1] = hi) into the pair's 8 double lanes: lane l (l < 8) receives
//   float:  (double(acc[l]) + double(acc[l+16])) + (double(acc[l+8]) + double(acc[l+24]))
//   double: acc[l] + acc[l+8]
// i.e. the first levels of a halving tree, in double.
inline VD fold_to8(const Simd<float>::V& lo, const Simd<float>::V& hi) {
  typedef Simd<float>::H H;
  H l0, l1, h0, h1;
  std::memcpy(&l0, &lo, sizeof(H));
  std::memcpy(&l1, reinterpret_cast<const char*>(&lo) + sizeof(H), sizeof(H));
  std::memcpy(&h0, &hi, sizeof(H));
  std::memcpy(&h1, reinterpret_cast<const char*>(&hi) + sizeof(H), sizeof(H));
  return (__builtin_convertvector(l0, VD) + __builtin_convertvector(h0, VD)) +
         (__builtin_convertvector(l1, VD) + __builtin_convertvector(h1, VD));
}
inline VD fold_to8(const Simd<double>::V& lo, const Simd<double>::V& hi) { return lo + hi; }

// End-of-block fold of the 8 double lanes: the last three halvings.
inline double fold_8(const double* c) {
  const double e0 = c[0] + c[4], e1 = c[1] + c[5], e2 = c[2] + c[6], e3 = c[3] + c[7];
  return (e0 + e2) + (e1 + e3);
}

// For the P rows b_p: sum over the tile of (a[c] - b_p[c])^2 in kLanes lanes of
// T (coordinate c -> lane c % kLanes), folded into the pairs' double lanes
// dl[p*8 .. p*8+7] (fold_to8).
template <typename T, int P>
inline void tile_sqdist(const T* a, const T* const* b, std::size_t len, double* dl) {
  typedef typename Simd<T>::V V;
  constexpr int W = kVecLen<T>, L = kLanes<T>;
  V lo[P], hi[P];
  for (int p = 0; p < P; ++p) lo[p] = hi[p] = V{};
  std::size_t c = 0;
  for (; c + L <= len; c += L) {
    const V x0 = load_vec(a + c), x1 = load_vec(a + c + W);
    for (int p = 0; p < P; ++p) {
      const V d0 = x0 - load_vec(b[p] + c), d1 = x1 - load_vec(b[p] + c + W);
      lo[p] += d0 * d0;
      hi[p] += d1 * d1;
    }
  }
  if (c < len) {
    // Tail of the last tile of d (len % L coordinates): one more step on
    // zero-padded copies, so coordinate c+l still goes to lane l and the
    // padding adds (0-0)^2 = 0 to the other lanes.
    alignas(64) T ta[L], tb[P][L];
    const std::size_t r = len - c;
    for (int l = 0; l < L; ++l) ta[l] = std::size_t(l) < r ? a[c + l] : T(0);
    for (int p = 0; p < P; ++p)
      for (int l = 0; l < L; ++l) tb[p][l] = std::size_t(l) < r ? b[p][c + l] : T(0);
    const V x0 = load_vec(ta), x1 = load_vec(ta + W);
    for (int p = 0; p < P; ++p) {
      const V d0 = x0 - load_vec(tb[p]), d1 = x1 - load_vec(tb[p] + W);
      lo[p] += d0 * d0;
      hi[p] += d1 * d1;
    }
  }
  for (int p = 0; p < P; ++p) {
    double* q = dl + p * kDoubleLanes;
    store_vd(q, load_vec<double, VD>(q) + fold_to8(lo[p], hi[p]));
  }
}

template <typename T, int P>
inline void pair_group(const T* const* rows, std::size_t i, std::size_t j, std::size_t t0, std::size_t len,
                       double* dl) {
  const T* b[P];
  for (int q = 0; q < P; ++q) b[q] = rows[j + q] + t0;
  tile_sqdist<T, P>(rows[i] + t0, b, len, dl);
}

// Exact fallback, in double, of a pair over a block (float input whose sum
// overflowed float although both rows are finite: values near the float max).
template <typename T>
double sqdist_double(const T* a, const T* b, std::size_t len) {
  double s = 0.0;
  for (std::size_t c = 0; c < len; ++c) {
    const double t = double(a[c]) - double(b[c]);
    s += t * t;
  }
  return s;
}

// true when x[0..len) holds no NaN and no inf (x*0 is NaN exactly for those,
// +-0 otherwise; summed lane-wise without branches).
template <typename T>
bool all_finite(const T* x, std::size_t len) {
  typedef typename Simd<T>::V V;
  constexpr int W = kVecLen<T>;
  V z = V{};
  std::size_t c = 0;
  for (; c + W <= len; c += W) z += load_vec(x + c) * T(0);
  T all = T(0);
  for (; c < len; ++c) all += x[c] * T(0);
  for (int l = 0; l < W; ++l) all += z[l];
  return all == T(0);
}

// One block [c0, c1): writes the block's sum of each pair (i<j, row-major
// triangle order) to part[npairs] and flags the block's non-finite rows in
// bad[n]. dl: this thread's scratch, npairs*8 doubles.
//
// Finiteness comes from the same pass: a finite pair sum proves both rows
// finite on the block (a NaN/inf coordinate makes every sum it enters NaN or
// inf); only a row none of whose pair sums is finite (a non-finite row, or a
// finite row whose sums all overflowed, or n == 1) is scanned again.
template <typename T>
void distance_block(const T* const* rows, std::size_t n, std::size_t d, std::size_t c0, std::size_t c1,
                    std::size_t tile, double* dl, double* part, unsigned char* bad) {
  const std::size_t npairs = n * (n - 1) / 2;
  std::fill(dl, dl + npairs * kDoubleLanes, 0.0);
  for (std::size_t t0 = c0; t0 < c1; t0 += tile) {
    const std::size_t len = std::min(tile, c1 - t0);
    const std::size_t pf_bytes = t0 + tile < d ? std::min(tile, d - (t0 + tile)) * sizeof(T) : 0;
    double* pl = dl;
    for (std::size_t i = 0; i < n; ++i) {
      // Prefetch row i's next tile, spread over this tile's computation.
      if (pf_bytes) {
        const char* pf = reinterpret_cast<const char*>(rows[i] + t0 + tile);
        for (std::size_t o = 0; o < pf_bytes; o += 64) __builtin_prefetch(pf + o, 0, 3);
      }
      std::size_t j = i + 1;
      for (; j + kPairGroup <= n; j += kPairGroup, pl += kPairGroup * kDoubleLanes)
        pair_group<T, kPairGroup>(rows, i, j, t0, len, pl);
      const std::size_t rem = n - j;  // < kPairGroup rows left
      if constexpr (kPairGroup > 3) {
        if (rem == 3) pair_group<T, 3>(rows, i, j, t0, len, pl);
      }
      if constexpr (kPairGroup > 2) {
        if (rem == 2) pair_group<T, 2>(rows, i, j, t0, len, pl);
      }
      if (rem == 1) pair_group<T, 1>(rows, i, j, t0, len, pl);
      pl += (n - j) * kDoubleLanes;
    }
  }
  for (std::size_t p = 0; p < npairs; ++p) part[p] = fold_8(dl + p * kDoubleLanes);
  // Finiteness of the rows on this block.
  std::fill(bad, bad + n, static_cast<unsigned char>(1));
  for (std::size_t i = 0, p = 0; i < n; ++i)
    for (std::size_t j = i + 1; j < n; ++j, ++p)
      if (std::isfinite(part[p])) bad[i] = bad[j] = 0;
  for (std::size_t i = 0; i < n; ++i)
    if (bad[i] && all_finite(rows[i] + c0, c1 - c0)) bad[i] = 0;
  // float: a pair sum that overflowed although both rows are finite.
  if (std::is_same<T, float>::value)
    for (std::size_t i = 0, p = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j, ++p)
        if (!std::isfinite(part[p]) && !bad[i] && !bad[j])
          part[p] = sqdist_double(rows[i] + c0, rows[j] + c0, c1 - c0);
}

// Row means. For 32 coordinates at a time, the sum over the selected rows is
// held in registers (a[32], vectorised by the compiler): per row and
// coordinate one load, one conversion, one add. Same order as the definition:
// per coordinate, rows in the order of `sel`, in double, then / cnt, rounded
// to T once.
template <typename T>
void mean_chunk(const T* const* rows, const std::size_t* sel, std::size_t cnt, std::size_t c0, std::size_t len,
                T* out) {
  constexpr std::size_t kStep = 32;
  const double dc = double(cnt);
  std::size_t c = 0;
  for (; c + kStep <= len; c += kStep) {
    double a[kStep];
    const T* r0 = rows[sel[0]] + c0 + c;
#pragma GCC unroll 32
    for (std::size_t l = 0; l < kStep; ++l) a[l] = double(r0[l]);
    for (std::size_t s = 1; s < cnt; ++s) {
      const T* r = rows[sel[s]] + c0 + c;
#pragma GCC unroll 32
      for (std::size_t l = 0; l < kStep; ++l) a[l] += double(r[l]);
    }
#pragma GCC unroll 32
    for (std::size_t l = 0; l < kStep; ++l) out[c + l] = T(a[l] / dc);
  }
  for (; c < len; ++c) {
    double a = double(rows[sel[0]][c0 + c]);
    for (std::size_t s = 1; s < cnt; ++s) a += double(rows[sel[s]][c0 + c]);
    out[c] = T(a / dc);
  }
}

// Coordinates per chunk of the row means (the parallel grain).
constexpr std::size_t kMeanChunk = 1024;

// out = mean of the rows `sel` (sorted by index), parallel over chunks of
// coordinates (each coordinate's sum has a fixed order: deterministic).
template <typename T>
void mean_rows(const T* const* rows, const std::size_t* sel, std::size_t cnt, std::size_t d, T* out) {
  const std::size_t nchunks = (d + kMeanChunk - 1) / kMeanChunk;
#pragma omp parallel for schedule(dynamic, 8) num_threads(reduce::threads_for(cnt * d))
  for (std::ptrdiff_t ch = 0; ch < std::ptrdiff_t(nchunks); ++ch) {
    const std::size_t c0 = std::size_t(ch) * kMeanChunk, len = std::min(kMeanChunk, d - c0);
    mean_chunk(rows, sel, cnt, c0, len, out + c0);
  }
}

template <typename T>
std::vector<double> distance_matrix(const T* const* rows, std::size_t n, std::size_t d) {
  std::vector<double> D(n * n);
  pairwise_sqdist<T>(rows, n, d, D.data());
  return D;
}

}  // namespace

// ---- pairwise_sqdist --------------------------------------------------------
template <typename T>
void pairwise_sqdist(const T* const* rows, std::size_t n, std::size_t d, double* D) {
  const std::size_t npairs = n * (n - 1) / 2;
  const std::size_t nblocks = (d + kReduceBlock - 1) / kReduceBlock;
  const std::size_t tile = distance_tile<T>(n);
  // Scratch before the parallel region (bad_alloc is caught by the engine).
  std::vector<double> part(nblocks * npairs, 0.0);
  std::vector<unsigned char> bad(nblocks * n, 0);
  const int nthreads = reduce::threads_for(n * d);
  std::vector<double> lanes(std::size_t(nthreads) * npairs * kDoubleLanes);
#pragma omp parallel for schedule(dynamic, 4) num_threads(nthreads)
  for (std::ptrdiff_t blk = 0; blk < std::ptrdiff_t(nblocks); ++blk) {
    const std::size_t c0 = std::size_t(blk) * kReduceBlock;
    const std::size_t c1 = std::min(d, c0 + kReduceBlock);
    double* dl = lanes.data() + std::size_t(reduce::thread_num()) * npairs * kDoubleLanes;
    distance_block<T>(rows, n, d, c0, c1, tile, dl, part.data() + std::size_t(blk) * npairs,
                      bad.data() + std::size_t(blk) * n);
  }
  // Combine the blocks in block order (deterministic).
  std::vector<double> sum(npairs, 0.0);
  std::vector<unsigned char> nonfinite(n, 0);
  for (std::size_t blk = 0; blk < nblocks; ++blk) {
    const double* pb = part.data() + blk * npairs;
    for (std::size_t p = 0; p < npairs; ++p) sum[p] += pb[p];
    for (std::size_t i = 0; i < n; ++i) nonfinite[i] |= bad[blk * n + i];
  }
  const double inf = std::numeric_limits<double>::infinity();
  std::size_t p = 0;
  for (std::size_t i = 0; i < n; ++i) {
    D[i * n + i] = nonfinite[i] ? inf : 0.0;
    for (std::size_t j = i + 1; j < n; ++j, ++p) {
      const double v = (nonfinite[i] || nonfinite[j]) ? inf : sum[p];
      D[i * n + j] = v;
      D[j * n + i] = v;
    }
  }
}

// ---- krum -------------------------------------------------------------------
template <typename T>
void krum(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) {
  const auto D = distance_matrix(rows, n, d);
  const auto sel = selection::krum_select(D.data(), n, f, 1);
  std::memcpy(out, rows[sel[0]], d * sizeof(T));
}

// ---- multi-krum -------------------------------------------------------------
template <typename T>
void multi_krum(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, std::size_t m, T* out) {
  const auto D = distance_matrix(rows, n, d);
  auto sel = selection::krum_select(D.data(), n, f, m);
  std::sort(sel.begin(), sel.end());
  mean_rows(rows, sel.data(), sel.size(), d, out);
}

// ---- bulyan -----------------------------------------------------------------
template <typename T>
void bulyan(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) {
  const auto D = distance_matrix(rows, n, d);
  auto sel = selection::bulyan_select(D.data(), n, f);
  std::sort(sel.begin(), sel.end());  // the coordinate phase sees the rows in index order
  const std::size_t theta = sel.size();
  std::vector<const T*> srows(theta);
  for (std::size_t s = 0; s < theta; ++s) srows[s] = rows[sel[s]];
  averaged_median<T>(srows.data(), theta, d, theta - 2 * f, out);
}

// ---- bulyan over multi-krum -------------------------------------------------
template <typename T>
void bulyan_multikrum(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, std::size_t m, T* out) {
  const auto D = distance_matrix(rows, n, d);
  const auto sets = selection::bulyan_multikrum_select(D.data(), n, f, m);
  const std::size_t theta = sets.size();
  // The theta contribution rows, materialised in a theta x span buffer of T,
  // span = min(d, kBmkSpan): one span (one parallel region for the means, one
  // averaged_median call) for d <= 2^20, bounded memory beyond. The coordinate
  // phase is per coordinate, so the span changes nothing in the result.
  // Per chunk of coordinates, all theta rounds are summed from the same cached
  // slice of G.
  constexpr std::size_t kBmkSpan = std::size_t(1) << 20;
  const std::size_t span = std::min(d, kBmkSpan);
  std::unique_ptr<T[]> buf(new T[theta * span]);  // default-initialised: no memset
  std::vector<const T*> brows(theta);
  for (std::size_t t = 0; t < theta; ++t) brows[t] = buf.get() + t * span;
  for (std::size_t s0 = 0; s0 < d; s0 += span) {
    const std::size_t len = std::min(span, d - s0);
    const std::size_t nchunks = (len + kMeanChunk - 1) / kMeanChunk;
#pragma omp parallel for schedule(dynamic, 8) num_threads(reduce::threads_for(n * len))
    for (std::ptrdiff_t ch = 0; ch < std::ptrdiff_t(nchunks); ++ch) {
      const std::size_t c0 = std::size_t(ch) * kMeanChunk, clen = std::min(kMeanChunk, len - c0);
      for (std::size_t t = 0; t < theta; ++t)
        mean_chunk(rows, sets[t].data(), sets[t].size(), s0 + c0, clen, buf.get() + t * span + c0);
    }
    averaged_upper_median<T>(brows.data(), theta, len, theta - 2 * f, out + s0);
  }
}

// ---- mda --------------------------------------------------------------------
template <typename T>
void mda(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) {
  const auto D = distance_matrix(rows, n, d);
  const auto sel = selection::mda_select(D.data(), n, f);
  mean_rows(rows, sel.data(), sel.size(), d, out);
}

// ---- nnm (pre-aggregator) ---------------------------------------------------
template <typename T>
void nnm(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) {
  const auto D = distance_matrix(rows, n, d);
  const std::size_t s = n - f;
  std::vector<std::size_t> sel(n * s);
  // same[i]: the first row whose neighbour set equals row i's (often: the
  // honest rows share one set); its mean is computed once and copied, which
  // gives the same bits as computing it again.
  std::vector<std::size_t> same(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto si = selection::nnm_select(D.data(), n, f, i);
    std::copy(si.begin(), si.end(), sel.begin() + std::ptrdiff_t(i * s));
    same[i] = i;
    for (std::size_t q = 0; q < i; ++q)
      if (same[q] == q && std::equal(si.begin(), si.end(), sel.begin() + std::ptrdiff_t(q * s))) {
        same[i] = q;
        break;
      }
  }
  // All n output rows per chunk of coordinates: G is read from memory once.
  const std::size_t nchunks = (d + kMeanChunk - 1) / kMeanChunk;
#pragma omp parallel for schedule(dynamic, 4) num_threads(reduce::threads_for(n * d))
  for (std::ptrdiff_t ch = 0; ch < std::ptrdiff_t(nchunks); ++ch) {
    const std::size_t c0 = std::size_t(ch) * kMeanChunk, len = std::min(kMeanChunk, d - c0);
    for (std::size_t i = 0; i < n; ++i) {
      if (same[i] == i)
        mean_chunk(rows, sel.data() + i * s, s, c0, len, out + i * d + c0);
      else
        std::memcpy(out + i * d + c0, out + same[i] * d + c0, len * sizeof(T));
    }
  }
}

// ---- explicit instantiations ------------------------------------------------
#define PYAGG_DISTANCE_INSTANTIATE(T)                                                                   \
  template void pairwise_sqdist<T>(const T* const*, std::size_t, std::size_t, double*);               \
  template void krum<T>(const T* const*, std::size_t, std::size_t, std::size_t, T*);                   \
  template void multi_krum<T>(const T* const*, std::size_t, std::size_t, std::size_t, std::size_t, T*); \
  template void bulyan<T>(const T* const*, std::size_t, std::size_t, std::size_t, T*);                 \
  template void bulyan_multikrum<T>(const T* const*, std::size_t, std::size_t, std::size_t, std::size_t, T*); \
  template void mda<T>(const T* const*, std::size_t, std::size_t, std::size_t, T*);                    \
  template void nnm<T>(const T* const*, std::size_t, std::size_t, std::size_t, T*);
PYAGG_DISTANCE_INSTANTIATE(float)
PYAGG_DISTANCE_INSTANTIATE(double)
#undef PYAGG_DISTANCE_INSTANTIATE

}  // namespace cpu
}  // namespace pyagg
