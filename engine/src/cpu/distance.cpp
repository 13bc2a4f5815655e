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
//      common/select_distance.h). The theta contribution rows are materialised
//      per chunk of 1024 coordinates in a per-thread buffer when theta <= 32
//      (else in a ~4 MiB span buffer of T) and out =
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
//  - D = pairwise_sqdist_select (every rule of this file; a float Gram
//    kernel for float input, see below) or pairwise_sqdist (the
//    double Gram kernel: the iterative rules and nnm's chain into a distance
//    rule, which combine distances in quadratic forms that cancel, and
//    next.cpp's rules, whose weights are not only rankings):
//    D[i*n+j] = sum_k (x_ik - x_jk)^2, from ONE blocked
//    pass over the data (Gram form, exact difference form wherever the Gram
//    form would cancel; see below). A non-finite row (any NaN/inf, detected in the same pass) is
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
// Distance pass: Gram form with an exact fallback, tiling, determinism
// ----------------------------------------------------------------------
//  n <= 32 rows (kGramMinN): the exact difference form only, sum_k (x_ik -
//  x_jk)^2 in float/double lanes per tile of 64..1024 coordinates (each lane a
//  fixed-order sum; four rows j against one row i; tiles folded into double;
//  see distance_block_exact; a tile whose rows are off 64-byte lines is
//  first copied to an aligned scratch tile, view_tile): at small n its ~n^2/2
//  differences per coordinate cost less than the Gram kernel's padded
//  multiply-adds.
//  n > 32: the Gram form below, in double. The selection rules on float input
//  (pairwise_sqdist_select) take a float Gram kernel instead where the target
//  has FMA: the packed one for n > 32 ("Float Gram kernel" below), the
//  lane-wise one for most n <= 32 ("Lane-wise float Gram kernel").
//  One pass over G. For each block of cpu::kReduceBlock coordinates (fixed,
//  independent of the thread count; OpenMP threads take whole blocks, dynamic
//  schedule) the block's Gram matrix is computed in double (SYRK-like, see
//  gram_block: tiles of 128 coordinates packed transposed (8 x 8 transposes
//  in registers with AVX-512), an 8 x 16 register-blocked multiply-add kernel
//  (8 x 8 for a last odd column group) over the upper triangle: ~n^2/2
//  multiply-adds per coordinate, at the machine's FMA rate), and each pair's
//  block distance is g = G_ii + G_jj - 2 G_ij.
//  - Cancellation guard, per pair and block, from the norms: when g <
//    2^-16 (G_ii + G_jj) (rows nearly equal relative to their size, e.g. 1e3
//    + 1e-2 noise) or g is not finite, that pair's block is recomputed exactly
//    in the difference form sum (x_ic - x_jc)^2 in double, from the block
//    still in cache. Gram rounding is ~1e-13 of the norms for float input
//    (products of floats are exact in double), so a Gram-form g keeps ~1e-8
//    relative accuracy or better; the exact form covers the rest.
//  - Non-finite rows, from the same pass: a finite G_ii proves row i finite
//    on the block; only a row with a non-finite G_ii is scanned again.
//  - Block sums are combined in block order by one thread: same input, same
//    bits, whatever the thread count or timing.
//  Scratch: nblocks*npairs partial doubles and, per thread, one packed tile
//  (128 x np doubles) and one block Gram (np x np doubles), np = n rounded up
//  to 8.
//
// Means of selected rows: per chunk of 32 coordinates the running sums sit in
// registers (double), rows added in increasing index order; parallel over
// chunks of coordinates (per-coordinate order fixed: deterministic). Many
// means of one chunk at once (nnm, bulyan-multikrum's rounds) share one read
// of it: rowmean.h mean_sets_chunk.
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
#include "common/sortnet_build.h"
#include "cpu/reduce.h"
#include "cpu/rowmean.h"

// The 64-byte vector-extension values below never cross a function boundary
// outside this file (internal linkage, inlined): GCC's note that their ABI
// differs without AVX-512 does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace pyagg {
namespace cpu {
namespace {

// ---- Exact (difference form) distance kernel: n <= kGramMinN ------------------
//
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

// The kernel's loop works on "units" of the target's native vector width (64
// bytes with AVX-512, 32 with AVX2, 16 otherwise): a pair's 128-byte
// accumulator is 2, 4 or 8 units, each lane doing the same operations in the
// same order whatever the unit size (the result bits do not depend on it).
// Written with 64-byte values on AVX2, GCC 12 kept the accumulators in memory
// and moved halves through general registers (measured: krum n=20, d=1e6,
// 38 ms with AVX2 vs 11 ms with AVX-512, no faster than SSE2).
// Rows processed together against one row x_i: 8 accumulator units per group
// (4 pairs x 2 zmm, 2 pairs x 4 ymm, 1 pair x 8 xmm), plus x_i's units.
constexpr int kUnitBytes = int(kVecBytes);       // cpu_backend.h: 64, 32 or 16
constexpr int kPairGroup = int(kVecBytes / 16);  // 4, 2 or 1

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
// dl[p*8 .. p*8+7] (fold_to8). len: a multiple of kLanes (view_tile pads the
// last tile of d with zeros: (0 - 0)^2 adds 0 to the lanes past its end).
template <typename T, int P>
inline void tile_sqdist(const T* a, const T* const* b, std::size_t len, double* dl) {
  typedef typename Simd<T>::V V;
  typedef T U __attribute__((vector_size(kUnitBytes)));
  constexpr int L = kLanes<T>;
  constexpr int UL = int(kUnitBytes / sizeof(T));  // lanes per unit
  constexpr int NU = L / UL;                        // units per accumulator
  U acc[P][NU];
  for (int p = 0; p < P; ++p)
    for (int u = 0; u < NU; ++u) acc[p][u] = U{};
  for (std::size_t c = 0; c < len; c += L) {
    U x[NU];
    for (int u = 0; u < NU; ++u) x[u] = load_vec<T, U>(a + c + u * UL);
    for (int p = 0; p < P; ++p)
      for (int u = 0; u < NU; ++u) {
        const U dd = x[u] - load_vec<T, U>(b[p] + c + u * UL);
        acc[p][u] += dd * dd;
      }
  }
#if defined(__AVX512F__)
  if constexpr (NU == 2) {
    // The same fold, from the two zmm accumulator units in registers (the
    // generic form below goes through memory: GCC then keeps every
    // accumulator of the tile on the stack). float: 8-lane chunks q of the
    // 32 lanes converted to double, (c0 + c2) + (c1 + c3) = fold_to8.
    for (int p = 0; p < P; ++p) {
      VD f;
      if constexpr (std::is_same<T, float>::value) {
        const __m512 a0 = reinterpret_cast<__m512>(acc[p][0]), a1 = reinterpret_cast<__m512>(acc[p][1]);
        auto half = [](__m512 a, int h) {
          // maskz forms: the same instructions, without GCC 12's -Wuninitialized false positive
          const __m256d x = h ? _mm512_maskz_extractf64x4_pd(__mmask8(0xF), _mm512_castps_pd(a), 1)
                              : _mm512_maskz_extractf64x4_pd(__mmask8(0xF), _mm512_castps_pd(a), 0);
          return reinterpret_cast<VD>(_mm512_maskz_cvtps_pd(__mmask8(0xFF), _mm256_castpd_ps(x)));
        };
        f = (half(a0, 0) + half(a1, 0)) + (half(a0, 1) + half(a1, 1));
      } else {
        f = reinterpret_cast<VD>(acc[p][0]) + reinterpret_cast<VD>(acc[p][1]);
      }
      double* q = dl + p * kDoubleLanes;
      store_vd(q, load_vec<double, VD>(q) + f);
    }
    return;
  }
#endif
  for (int p = 0; p < P; ++p) {
    // lanes 0..W-1 = lo, W..2W-1 = hi (the fold's definition)
    V lo, hi;
    std::memcpy(&lo, &acc[p][0], sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&acc[p][0]) + sizeof lo, sizeof hi);
    double* q = dl + p * kDoubleLanes;
    store_vd(q, load_vec<double, VD>(q) + fold_to8(lo, hi));
  }
}

// The distance kernels' tiles (reduce::TileRows): read in place, or copied to
// `stage` (64-byte aligned, row i at stage + i * tile) with the last step
// padded with zeros. Copied: a tile that is not a whole number of steps (the
// last tile of d), and, with realign, from kStageMinN rows on, a tile with a
// row off a 64-byte line. numpy hands out rows 16 bytes past a line (an
// allocation's header), and a 64-byte load that straddles two lines cost the
// exact kernel 1.45x its time (AMD Zen 4, n = 20, d = 1e7, 2 threads: 74 ms
// with the rows 16 bytes off a line, 51 ms on lines); each row's copy buys
// back its ~n/2 straddling loads. Below 16 rows the copy cost more than it
// saved (n = 5: 1.25-1.5x slower; n = 8, 12: the same; n = 16, 20:
// 0.87-0.92x, L3-resident).
using reduce::on_line;
using reduce::to_line;
using reduce::TileRows;
constexpr std::size_t kStageMinN = 16;

// The tile [t0, t0 + len) of the n rows (stage: n * tile elements, 64-byte
// aligned); *steps = len rounded up to the kernel's step (kLanes<T> for the
// exact kernel, kLaneF for the lane-wise Gram kernel). realign: copy a tile
// with a row off a line (from kStageMinN rows); false: copy only to pad the
// last tile of d.
template <typename T>
TileRows<T> view_tile(const T* const* rows, std::size_t n, std::size_t t0, std::size_t len, std::size_t tile,
                      std::size_t step, bool realign, T* stage, std::size_t* steps) {
  *steps = (len + step - 1) / step * step;
  bool in_place = *steps == len;  // no padding needed
  if (realign && n >= kStageMinN)
    for (std::size_t i = 0; i < n && in_place; ++i) in_place = on_line(rows[i] + t0);
  if (in_place) return TileRows<T>{rows, t0, nullptr, tile};
  return reduce::copy_tile(rows, n, t0, len, *steps, tile, stage);
}

// Doubles of a thread's scratch for distance_block_exact: the pairs' double
// lanes, the rows' norm lanes, then the staged tile (64-byte aligned).
template <typename T>
std::size_t exact_scratch_doubles(std::size_t n, std::size_t tile) {
  return n * (n - 1) / 2 * kDoubleLanes + n * reduce::kLanes + (n * tile * sizeof(T) + 63) / sizeof(double) + 8;
}

template <typename T, int P>
inline void pair_group(const TileRows<T>& v, std::size_t i, std::size_t j, std::size_t len, double* dl) {
  const T* b[P];
  for (int q = 0; q < P; ++q) b[q] = v[j + q];
  tile_sqdist<T, P>(v[i], b, len, dl);
}

// The exact difference form, in double, of a pair over a block (the Gram
// kernels' cancellation guard; float input whose sum overflowed float although
// both rows are finite). Coordinate c goes to lane c % 8 of accumulator
// (c / 8) % 4 (four independent chains: a single chain waited on the adder's
// latency, ~4 cycles a coordinate, and made every guarded pair ~20x a Gram
// pair); the accumulators are folded in a fixed order, then the last len % 32
// coordinates added in order: the same bits whatever the caller.
inline VD load8_as_vd(const double* p) { return load_vec<double, VD>(p); }
inline VD load8_as_vd(const float* p) {
  typedef float F8 __attribute__((vector_size(32)));
  F8 v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, VD);
}
template <typename T>
double sqdist_double(const T* a, const T* b, std::size_t len) {
  VD acc[4] = {VD{}, VD{}, VD{}, VD{}};
  std::size_t c = 0;
  for (; c + 32 <= len; c += 32)
    for (std::size_t q = 0; q < 4; ++q) {
      const VD t = load8_as_vd(a + c + 8 * q) - load8_as_vd(b + c + 8 * q);
      acc[q] += t * t;
    }
  alignas(64) double l[8];
  store_vd(l, (acc[0] + acc[1]) + (acc[2] + acc[3]));
  double s = fold_8(l);
  for (; c < len; ++c) {
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
// bad[n]. sc: this thread's scratch, exact_scratch_doubles<T>(n, tile).
// norms (may be null): the rows' block sums of squares with block_sumsq's
// bits, taken tile by tile from the tile in L1 (reduce.h sumsq_lanes), as the
// Gram kernel takes them, instead of a pass over each block after it (from
// L2). pairwise_sqdist_norms over pairwise_sqdist, n = 20, d = 1e7, float, 2
// threads, mean of 4 alternating runs: 12.3 ms -> 10.5 ms (the widening to
// double is most of it); geometric median at n = 8..20: within noise.
//
// Finiteness comes from the same pass: a finite pair sum proves both rows
// finite on the block (a NaN/inf coordinate makes every sum it enters NaN or
// inf); only a row none of whose pair sums is finite (a non-finite row, or a
// finite row whose sums all overflowed, or n == 1) is scanned again.
constexpr double kExactTinyF = 0x1p-100;  // per coordinate: see the end of distance_block_exact
// How far ahead the hints fetch: ~3 KiB of each row, whole tiles, at least
// one (n = 20, float: 3 tiles of 1 KiB; 1 ahead, the staged tiles' copies
// waited on memory: d = 1e7, rows 16 bytes off a line, 2 threads: 72-92 ms
// before staging, 57-64 ms staged with 3 ahead, 2 to 6 ahead within noise;
// n = 5, float: 1 tile of 4 KiB, as before: 3 ahead was 1.12x slower).
constexpr std::size_t kExactLeadBytes = 3072;
template <typename T>
void distance_block_exact(const T* const* rows, std::size_t n, std::size_t d, std::size_t c0, std::size_t c1,
                    std::size_t tile, double* sc, double* part, unsigned char* bad, double* norms = nullptr) {
  const std::size_t npairs = n * (n - 1) / 2;
  double* dl = sc;
  std::fill(dl, dl + npairs * kDoubleLanes, 0.0);
  double* lanes = sc + npairs * kDoubleLanes;
  if (norms) std::fill(lanes, lanes + n * reduce::kLanes, 0.0);
  T* stage = to_line<T>(lanes + n * reduce::kLanes);
  for (std::size_t t0 = c0; t0 < c1; t0 += tile) {
    const std::size_t len = std::min(tile, c1 - t0);
    std::size_t steps = 0;
    const TileRows<T> v = view_tile(rows, n, t0, len, tile, std::size_t(kLanes<T>), true, stage, &steps);
    const std::size_t t_pf = t0 + std::max<std::size_t>(1, kExactLeadBytes / (tile * sizeof(T))) * tile;
    const std::size_t pf_bytes = t_pf < d ? std::min(tile, d - t_pf) * sizeof(T) : 0;
    double* pl = dl;
    for (std::size_t i = 0; i < n; ++i) {
      // Hint rows 2i and 2i+1 of the tile at t_pf: every hint
      // is out by row n/2 (a quarter of the tile's pairs still to compute).
      if (pf_bytes)
        for (std::size_t q = 2 * i; q < std::min(n, 2 * i + 2); ++q)
          reduce::prefetch_span_l2(reinterpret_cast<const char*>(rows[q] + t_pf), pf_bytes);
      std::size_t j = i + 1;
      for (; j + kPairGroup <= n; j += kPairGroup, pl += kPairGroup * kDoubleLanes)
        pair_group<T, kPairGroup>(v, i, j, steps, pl);
      const std::size_t rem = n - j;  // < kPairGroup rows left
      if constexpr (kPairGroup > 3) {
        if (rem == 3) pair_group<T, 3>(v, i, j, steps, pl);
      }
      if constexpr (kPairGroup > 2) {
        if (rem == 2) pair_group<T, 2>(v, i, j, steps, pl);
      }
      if constexpr (kPairGroup > 1) {
        if (rem == 1) pair_group<T, 1>(v, i, j, steps, pl);
      }
      pl += (n - j) * kDoubleLanes;
    }
    // The norms once the pairs have brought the tile into L1 (before them, the
    // first touch of a tile read in place waited on L2: float64, n = 8,
    // geometric median 1.15x slower).
    if (norms)
      for (std::size_t r = 0; r < n; ++r)
        reduce::sumsq_lanes(v[r], len - len % reduce::kLanes, lanes + r * reduce::kLanes);
  }
  for (std::size_t p = 0; p < npairs; ++p) part[p] = fold_8(dl + p * kDoubleLanes);
  if (norms) {
    const std::size_t rem = (c1 - c0) % reduce::kLanes;
    for (std::size_t i = 0; i < n; ++i)
      norms[i] = reduce::sumsq_tail_fold(lanes + i * reduce::kLanes, rows[i] + c1 - rem, rem);
  }
  // Finiteness of the rows on this block.
  std::fill(bad, bad + n, static_cast<unsigned char>(1));
  for (std::size_t i = 0, p = 0; i < n; ++i)
    for (std::size_t j = i + 1; j < n; ++j, ++p)
      if (std::isfinite(part[p])) bad[i] = bad[j] = 0;
  for (std::size_t i = 0; i < n; ++i)
    if (bad[i] && all_finite(rows[i] + c0, c1 - c0)) bad[i] = 0;
  // float: a pair sum that overflowed although both rows are finite, or one
  // so small that its squares may have underflowed (mean term below 2^-100:
  // a float square below 2^-126 is off by up to 2^-150 absolute), in double
  // from the block in cache. Above 2^-100 the underflow adds at most 2^-50
  // of the sum: exact_kernel_rel_bound counts it.
  if (std::is_same<T, float>::value) {
    const double tiny = kExactTinyF * double(c1 - c0);
    for (std::size_t i = 0, p = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j, ++p)
        if ((!std::isfinite(part[p]) || part[p] < tiny) && !bad[i] && !bad[j])
          part[p] = sqdist_double(rows[i] + c0, rows[j] + c0, c1 - c0);
  }
}

// Combines per-block pair sums (npairs per block, block order: deterministic)
// and per-block non-finite flags into D (n x n): +inf to and from a
// non-finite row, D[i][i] = 0 for a finite row.
void combine_distance_blocks(const std::vector<double>& part, const std::vector<unsigned char>& bad,
                             std::size_t nblocks, std::size_t n, double* D) {
  const std::size_t npairs = n * (n - 1) / 2;
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

// The blocked distance pass both pairwise_sqdist forms share: blocks of
// kReduceBlock coordinates (fixed, independent of the thread count), OpenMP
// threads take whole blocks (dynamic schedule); block(c0, c1, thread,
// scratch, pair sums, bad flags) fills one block's npairs sums and n
// non-finite flags; per_thread scratch doubles per thread; blocks combined
// in block order into D.
//
// first_alone: block 0 runs first, alone, in the calling thread (thread
// index 0), before the other blocks start (the float Gram kernel's decision,
// see distance_pass).
template <typename Block>
void run_distance_blocks(std::size_t n, std::size_t d, std::size_t per_thread, Block&& block, double* D,
                         bool first_alone = false) {
  const std::size_t npairs = n * (n - 1) / 2;
  const std::size_t nblocks = (d + kReduceBlock - 1) / kReduceBlock;
  // Scratch before the parallel region (bad_alloc is caught by the engine).
  std::vector<double> part(nblocks * npairs, 0.0);
  std::vector<unsigned char> bad(nblocks * n, 0);
  const int nthreads = reduce::threads_for(n * d);
  std::vector<double> scratch(std::size_t(nthreads) * per_thread);
  const std::size_t start = first_alone ? 1 : 0;
  if (first_alone)
    block(0, std::min(d, kReduceBlock), 0, scratch.data(), part.data(), bad.data());
#pragma omp parallel for schedule(dynamic, 2) num_threads(nthreads)
  for (std::ptrdiff_t blk = std::ptrdiff_t(start); blk < std::ptrdiff_t(nblocks); ++blk) {
    const std::size_t c0 = std::size_t(blk) * kReduceBlock;
    const std::size_t c1 = std::min(d, c0 + kReduceBlock);
    const int t = reduce::thread_num();
    block(c0, c1, t, scratch.data() + std::size_t(t) * per_thread, part.data() + std::size_t(blk) * npairs,
          bad.data() + std::size_t(blk) * n);
  }
  combine_distance_blocks(part, bad, nblocks, n, D);
}

// The Gram kernels' prefetch of the next tile: its lines (lines_per_row per
// row, from column `from` of every row) are hinted a few per micro-kernel
// call, spread over the current tile's arithmetic (all ~800 at once at n =
// 100 wait on the line-fill buffers and stall the packing), into L2 (see
// reduce::prefetch_span_l2; the double kernel's L1 hints were 3-11% slower at
// n = 40-100 on the AMD host). total = 0: nothing to hint. The hint's row and
// line are counted, not divided out of its index: with a run-time line count
// (the packed float kernel's tile) each hint cost a 64-bit division.
template <typename T>
struct SpreadHints {
  const T* const* rows;
  std::size_t from, lines_per_row, total, step, next = 0;
  std::size_t row = 0, line = 0;  // next = row * lines_per_row + line
  SpreadHints(const T* const* r, std::size_t from_, std::size_t lines, std::size_t nrows, bool on, std::size_t calls)
      : rows(r), from(from_), lines_per_row(lines), total(on ? nrows * lines : 0),
        step((total + calls - 1) / calls) {}
  void operator()() {
    for (std::size_t e = std::min(total, next + step); next < e; ++next) {
      reduce::prefetch_l2(reinterpret_cast<const char*>(rows[row] + from) + line * 64);
      if (++line == lines_per_row) {
        line = 0;
        ++row;
      }
    }
  }
};

// ---- Gram distance kernel ---------------------------------------------------
//
// Per block of kReduceBlock coordinates, the block's Gram matrix in double,
// SYRK-like: the block is walked in tiles of kGramTile coordinates; a tile is
// packed transposed and converted to double, pk[c*np + i] = x_i[c] (np = n
// padded to a multiple of the column group; padding columns hold 0), then a
// register-blocked micro-kernel adds, for a group of kGramRows rows i
// (broadcast) and NV*kGramLanes rows j (vector lanes),
//   acc[r][v] += pk[c][i+r] * pk[c][j + v*kGramLanes .. ]   over the tile,
// for the column groups with i <= j only (upper triangle + diagonal): about
// n^2/2 multiply-adds per coordinate, no difference, no horizontal sum.
// The accumulators are added to the block Gram Gb (np x np doubles) after
// each tile. Products of float values are exact in double, so for float input
// the only rounding is the double summation.
typedef double VG __attribute__((vector_size(64)));  // 8 double lanes
constexpr std::size_t kGramLanes = 8;
constexpr std::size_t kGramRows = 8;    // rows i per micro-kernel call (broadcast)
constexpr std::size_t kGramTile = 128;  // coordinates per packed tile

inline VG load_vg(const double* p) {
  VG v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_vg(double* p, const VG& v) { std::memcpy(p, &v, sizeof v); }

// Gb[(i0+r)*np + j0 + l] += sum_c pk[c*np + i0 + r] * pk[c*np + j0 + l],
// r < kGramRows, l < NV*kGramLanes, c < len (coordinates in order).
template <std::size_t NV, std::size_t R = kGramRows>
inline void gram_micro(const double* __restrict pk, std::size_t np, std::size_t len, std::size_t i0, std::size_t j0,
                       double* __restrict Gb) {
  VG acc[R][NV];
  for (std::size_t r = 0; r < R; ++r)
    for (std::size_t v = 0; v < NV; ++v) acc[r][v] = VG{};
  for (std::size_t c = 0; c < len; ++c) {
    const double* p = pk + c * np;
    VG b[NV];
    for (std::size_t v = 0; v < NV; ++v) b[v] = load_vg(p + j0 + v * kGramLanes);
    for (std::size_t r = 0; r < R; ++r) {
      const double a = p[i0 + r];
      for (std::size_t v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (std::size_t r = 0; r < R; ++r)
    for (std::size_t v = 0; v < NV; ++v) {
      double* g = Gb + (i0 + r) * np + j0 + v * kGramLanes;
      store_vg(g, load_vg(g) + acc[r][v]);
    }
}

// Rows padded to a whole number of 8-row groups (padding columns hold 0).
inline std::size_t gram_np(std::size_t n) { return (n + kGramRows - 1) / kGramRows * kGramRows; }
// Columns [0, full) in 16-wide groups; an odd last group of 8, [full, np), is
// held transposed: Gram(i, j) for i < full <= j is at Gb[j][i].
inline std::size_t gram_full(std::size_t np) { return np / (2 * kGramLanes) * (2 * kGramLanes); }

#if defined(__AVX512F__)

// Packs 8 rows' coordinates [src, src + 8) transposed: pk[(c + q) * np + i0
// + r] = x_{i0+r}[src + q], r, q < 8 (an 8 x 8 transpose in registers: three
// rounds of two-source permutes, vpermt2pd) instead of 64 scalar conversions
// and stores. (Intrinsics, not __builtin_shuffle: clang, which builds the
// sanitizer tests, has no such builtin.)
inline VG permute2(const VG& a, const VG& b, __m512i idx) {
  return reinterpret_cast<VG>(
      _mm512_permutex2var_pd(reinterpret_cast<__m512d>(a), idx, reinterpret_cast<__m512d>(b)));
}
template <typename T>
inline void pack_8x8(const T* const* rows, std::size_t i0, std::size_t src, std::size_t c, double* pk,
                     std::size_t np) {
  VG r[8], t[8], u[8];
  for (int q = 0; q < 8; ++q) r[q] = load8_as_vd(rows[i0 + std::size_t(q)] + src);
  // _mm512_set_epi64 lists lanes 7..0; index i < 8 picks lane i of a, 8 + i lane i of b
  const __m512i even = _mm512_set_epi64(14, 6, 12, 4, 10, 2, 8, 0), odd = _mm512_set_epi64(15, 7, 13, 5, 11, 3, 9, 1);
  const __m512i lo2 = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0), hi2 = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
  const __m512i lo4 = _mm512_set_epi64(11, 10, 9, 8, 3, 2, 1, 0), hi4 = _mm512_set_epi64(15, 14, 13, 12, 7, 6, 5, 4);
  for (int q = 0; q < 8; q += 2) {
    t[q] = permute2(r[q], r[q + 1], even);  // rows q, q+1 at coordinates 0, 2, 4, 6
    t[q + 1] = permute2(r[q], r[q + 1], odd);
  }
  for (int q = 0; q < 8; q += 4) {
    u[q] = permute2(t[q], t[q + 2], lo2);      // rows q..q+3 at coordinates 0, 4
    u[q + 1] = permute2(t[q + 1], t[q + 3], lo2);  // 1, 5
    u[q + 2] = permute2(t[q], t[q + 2], hi2);  // 2, 6
    u[q + 3] = permute2(t[q + 1], t[q + 3], hi2);  // 3, 7
  }
  for (int q = 0; q < 4; ++q) {
    store_vg(pk + (c + std::size_t(q)) * np + i0, permute2(u[q], u[q + 4], lo4));
    store_vg(pk + (c + std::size_t(q) + 4) * np + i0, permute2(u[q], u[q + 4], hi4));
  }
}
#endif

// The Gram matrix of rows [c0, c1) into Gb (np x np: the diagonal, the upper
// triangle of columns < full, rows >= full of the last group). pk: kGramTile*np
// doubles of scratch.
//
// Column groups of 16 rows j (2 vectors), row groups i0 of 8 up to the
// group's last column; when np is an odd number of 8-row groups, the last 8
// columns are computed as rows (transposed, see gram_full). No padding-only
// group is computed (n = 100: 6208 multiply-adds per coordinate for the
// triangle's 5050, was 7168 with groups of 16 padded to 112). Each Gb
// element's sum is the same whatever the grouping (a*b and b*a round alike).
//
// lanes (may be null): n x reduce::kLanes doubles, zeroed by the caller; each
// row's block_sumsq lanes are added tile by tile (reduce.h sumsq_lanes) from
// the tile just packed, still in L1 (the block's last len % kLanes terms are
// the caller's, sumsq_tail_fold).
template <typename T>
void gram_block(const T* const* rows, std::size_t n, std::size_t d, std::size_t c0, std::size_t c1, double* pk,
                double* Gb, double* lanes) {
  const std::size_t np = gram_np(n);
  std::fill(Gb, Gb + np * np, 0.0);
  std::fill(pk, pk + kGramTile * np, 0.0);  // padding columns i >= n stay 0
  const std::size_t full = gram_full(np);
  std::size_t ncalls = full < np ? full / (2 * kGramLanes) + 1 : 0;  // micro-kernel calls per tile
  for (std::size_t j0 = 0; j0 < full; j0 += 2 * kGramLanes) ncalls += (j0 + 2 * kGramLanes) / kGramRows;
  for (std::size_t t0 = c0; t0 < c1; t0 += kGramTile) {
    const std::size_t len = std::min(kGramTile, c1 - t0);
    SpreadHints<T> hint(rows, t0 + kGramTile, kGramTile * sizeof(T) / 64, n, t0 + 2 * kGramTile <= d, ncalls);
    std::size_t i = 0, c = 0;
#if defined(__AVX512F__)
    const std::size_t len8 = len / 8 * 8;
    for (; i + 8 <= n; i += 8)
      for (std::size_t cc = 0; cc < len8; cc += 8) pack_8x8<T>(rows, i, t0 + cc, cc, pk, np);
    for (std::size_t r = 0; r < i; ++r)
      for (c = len8; c < len; ++c) pk[c * np + r] = double(rows[r][t0 + c]);
#endif
    for (; i < n; ++i) {
      const T* x = rows[i] + t0;
      for (c = 0; c < len; ++c) pk[c * np + i] = double(x[c]);
    }
    if (lanes) {
      const std::size_t len16 = len - len % reduce::kLanes;
      for (std::size_t r = 0; r < n; ++r) reduce::sumsq_lanes(rows[r] + t0, len16, lanes + r * reduce::kLanes);
    }
    for (std::size_t j0 = 0; j0 < full; j0 += 2 * kGramLanes) {
      for (std::size_t i0 = 0; i0 < j0 + kGramLanes; i0 += kGramRows) {
        hint();
        gram_micro<2>(pk, np, len, i0, j0, Gb);
      }
      // The diagonal block's lower 8 rows need its upper 8 columns only.
      hint();
      gram_micro<1>(pk, np, len, j0 + kGramLanes, j0 + kGramLanes, Gb);
    }
    if (full < np) {
      // The last 8 columns: their products with rows [0, full) as the
      // transposed blocks (rows full.., columns j0..j0+15: the 16-wide
      // kernel; the 8-wide one is load-bound), then the diagonal block. At
      // most 4 real rows there (n = 100: 96..99): the half-height kernel.
      const bool half = n - full <= kGramRows / 2;
      for (std::size_t j0 = 0; j0 < full; j0 += 2 * kGramLanes) {
        hint();
        if (half)
          gram_micro<2, kGramRows / 2>(pk, np, len, full, j0, Gb);
        else
          gram_micro<2>(pk, np, len, full, j0, Gb);
      }
      hint();
      if (half)
        gram_micro<1, kGramRows / 2>(pk, np, len, full, full, Gb);
      else
        gram_micro<1>(pk, np, len, full, full, Gb);
    }
  }
}

// Both Gram kernels' read-out of one block [c0, c1) from its Gram matrix Gb
// (leading dimension ld; Gram(i, j) for i < full <= j held at Gb[j][i]):
// bad[i] = row i non-finite on the block (a finite Gram diagonal proves the
// row finite; otherwise, NaN/inf or squares beyond the range, look at the
// data), and per pair (i < j, row-major triangle order) part[p] = the Gram
// form g = G_ii + G_jj - 2 G_ij when g >= rel * (G_ii + G_jj) + abs and g is
// finite, +inf for a pair with a non-finite row, else kExactMark (the pair's
// block is to be computed in the exact form: fill_exact). Returns the number
// of marked pairs. Depends on the block's data only.
constexpr double kExactMark = -1.0;  // never a Gram-form value (those are >= 0)
template <typename T>
std::size_t gram_guard(const T* const* rows, std::size_t n, std::size_t c0, std::size_t c1, const double* Gb,
                       std::size_t ld, std::size_t full, double rel, double abs, double* part, unsigned char* bad) {
  for (std::size_t i = 0; i < n; ++i)
    bad[i] = std::isfinite(Gb[i * ld + i]) ? 0 : (all_finite(rows[i] + c0, c1 - c0) ? 0 : 1);
  std::size_t marked = 0;
  for (std::size_t i = 0, p = 0; i < n; ++i)
    for (std::size_t j = i + 1; j < n; ++j, ++p) {
      const double gii = Gb[i * ld + i], gjj = Gb[j * ld + j];
      const double gij = (i < full && j >= full) ? Gb[j * ld + i] : Gb[i * ld + j];
      const double g = (gii + gjj) - 2.0 * gij;
      if (g >= rel * (gii + gjj) + abs && std::isfinite(g)) {
        part[p] = g;
      } else if (bad[i] || bad[j]) {
        part[p] = std::numeric_limits<double>::infinity();  // replaced by +inf for the row anyway
      } else {
        part[p] = kExactMark;
        ++marked;
      }
    }
  return marked;
}
// The marked pairs' block sums in the exact difference form, in double, from
// the block still in cache.
template <typename T>
void fill_exact(const T* const* rows, std::size_t n, std::size_t c0, std::size_t c1, double* part) {
  for (std::size_t i = 0, p = 0; i < n; ++i)
    for (std::size_t j = i + 1; j < n; ++j, ++p)
      if (part[p] == kExactMark) part[p] = sqdist_double(rows[i] + c0, rows[j] + c0, c1 - c0);
}

// One block [c0, c1): the block's squared distance of each pair (i<j,
// row-major triangle order) into part[npairs], the block's non-finite rows
// flagged in bad[n].
//
// Gram form g = Gb[i][i] + Gb[j][j] - 2 Gb[i][j], unless cancellation makes
// it unsafe: when g < kGramSafe * (Gb[i][i] + Gb[j][j]) (rows nearly equal
// relative to their norms: the rounding of the three Gram terms, ~1e-13 of
// the norms, would be more than ~1e-8 of g), or g is not finite, the pair's
// block is recomputed exactly in the difference form (sqdist_double), from
// data still in cache. The decision depends on the block's data only
// (deterministic, whatever the thread count).
constexpr double kGramSafe = 1.0 / 65536.0;

// norms (may be null): the rows' block sums of squares, block_sumsq's bits;
// lanes: their n x kLanes scratch.
template <typename T>
void distance_block_gram(const T* const* rows, std::size_t n, std::size_t d, std::size_t c0, std::size_t c1,
                         double* pk, double* Gb, double* part, unsigned char* bad, std::size_t* exact,
                         double* norms, double* lanes) {
  const std::size_t np = gram_np(n), full = gram_full(np);
  if (norms) std::fill(lanes, lanes + n * reduce::kLanes, 0.0);
  gram_block<T>(rows, n, d, c0, c1, pk, Gb, norms ? lanes : nullptr);
  if (norms) {
    const std::size_t rem = (c1 - c0) % reduce::kLanes;
    for (std::size_t i = 0; i < n; ++i)
      norms[i] = reduce::sumsq_tail_fold(lanes + i * reduce::kLanes, rows[i] + c1 - rem, rem);
  }
  *exact += gram_guard(rows, n, c0, c1, Gb, np, full, kGramSafe, 0.0, part, bad);
  fill_exact(rows, n, c0, c1, part);
}

// ---- Float Gram kernel (selection rules, float input, FMA targets) -----------
//
// The distance pass of the selection rules (krum, multi-krum, bulyan,
// bulyan-multikrum, mda, nnm and nnm's fused chains: pairwise_sqdist_select)
// on float input with n > kGramMinN, compiled where the target has FMA (the
// avx2, avx512 and native copies; the portable copy keeps the double Gram
// kernel). The same blocks and triangle as the double kernel, in float at
// twice the lanes per instruction:
//  - a tile is packed transposed as float, pf[c*npf + i] = x_i[c] (npf = n
//    rounded up to the vector width, padding columns 0);
//  - each Gram entry's products are summed with fused multiply-adds in float
//    over runs of kGramRunF coordinates (a fresh accumulator per run, in
//    coordinate order), and each run's float sum is added to the block Gram
//    in double, runs in order. FMA rounds once, so the bits do not depend on
//    the register tiling (avx2 and avx512 agree) nor on the thread count.
//  - Rounding: a run's recursive FMA sum of S = kGramRunF products is off by
//    at most gamma_S * sum |x_ic x_jc| (gamma_S = S u / (1 - S u), u = 2^-24),
//    plus S * 2^-150 for products under the float normal range; the double
//    additions add ~1e-16 relative. With sum |x_ic x_jc| <= (G_ii + G_jj) / 2,
//    the block distance g = G_ii + G_jj - 2 G_ij is off by at most
//    2 gamma_S (G_ii + G_jj) + 4 len 2^-150.
//  - Guard, per pair and block: the Gram form is kept when g >= kGramSafeF *
//    (G_ii + G_jj) + kGramTinyF * len (then g's relative error is at most
//    2 gamma_32 / (1/16 - 2 gamma_32) = 6.11e-5 plus 4 * 2^-150 / 2^-128 =
//    9.5e-7 for the underflow: < 6.2e-5; on data without cancellation it is
//    ~1e-8, the runs' errors being independent); otherwise the pair's block is recomputed exactly in the
//    difference form in double (sqdist_double), from the block in cache. A
//    non-finite float G_ii (NaN/inf in the row, or squares beyond the float
//    range) sends the row's pairs to the same exact form unless the row is
//    non-finite.
//  - When more than a quarter of a block's pairs fail the guard (rows that
//    are nearly equal as a whole: ~1e3 + noise, or highly correlated honest
//    gradients), the block is computed again by the double Gram kernel
//    (distance_block_gram, its own 2^-16 guard and exact fallback): the float
//    result of that block is discarded. Block 0 is computed first, alone;
//    when it needed the double kernel, every other block goes straight to it
//    (no float attempt). The decision reads block 0's data only:
//    deterministic.
#if defined(__FMA__) && defined(__AVX2__)
#define PYAGG_FLOAT_GRAM 1
#if defined(__AVX512F__)
typedef __m512 VF;
constexpr std::size_t kFW = 16;    // floats per vector
constexpr std::size_t kFRows = 8;  // rows i per micro-kernel call (broadcast)
inline VF vf_zero() { return _mm512_setzero_ps(); }
inline VF vf_load(const float* p) { return _mm512_loadu_ps(p); }
inline VF vf_bcast(const float* p) { return _mm512_set1_ps(*p); }
inline VF vf_fma(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
// g[0..15] += double(acc[0..15])
inline void vf_flush(double* g, VF acc) {
  // (maskz forms: GCC 12 warns about the unmasked ones' undefined sources)
  const __m512d a = _mm512_castps_pd(acc);
  const __m512d lo =
      _mm512_maskz_cvtps_pd(__mmask8(0xFF), _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(__mmask8(0xF), a, 0)));
  const __m512d hi =
      _mm512_maskz_cvtps_pd(__mmask8(0xFF), _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(__mmask8(0xF), a, 1)));
  _mm512_storeu_pd(g, _mm512_add_pd(_mm512_loadu_pd(g), lo));
  _mm512_storeu_pd(g + 8, _mm512_add_pd(_mm512_loadu_pd(g + 8), hi));
}
#else
typedef __m256 VF;
constexpr std::size_t kFW = 8;
constexpr std::size_t kFRows = 4;  // 16 ymm registers: 8 accumulators + 2 loads + 1 broadcast
inline VF vf_zero() { return _mm256_setzero_ps(); }
inline VF vf_load(const float* p) { return _mm256_loadu_ps(p); }
inline VF vf_bcast(const float* p) { return _mm256_broadcast_ss(p); }
inline VF vf_fma(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
inline void vf_flush(double* g, VF acc) {
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(acc));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(acc, 1));
  _mm256_storeu_pd(g, _mm256_add_pd(_mm256_loadu_pd(g), lo));
  _mm256_storeu_pd(g + 4, _mm256_add_pd(_mm256_loadu_pd(g + 4), hi));
}
#endif
constexpr std::size_t kGramRunF = 32;  // coordinates per float run (divides every tile)
constexpr double kGramSafeF = 1.0 / 16.0;
constexpr double kGramTinyF = 0x1p-128;  // per coordinate: see "Rounding" above

// Columns are padded to whole vectors; [0, fullf) in groups of 2 vectors, an
// odd last vector [fullf, npf) held transposed (as gram_full).
inline std::size_t gram_npf(std::size_t n) { return (n + kFW - 1) / kFW * kFW; }
inline std::size_t gram_fullf(std::size_t npf) { return npf / (2 * kFW) * (2 * kFW); }

// Gb[(i0+r)*npf + j0 + l] += sum over c in [r0, r1) (one run, coordinate
// order, fused multiply-adds in float from 0) of pf[c*npf + i0 + r] *
// pf[c*npf + j0 + l], r < kFRows, l < NV*kFW.
template <std::size_t NV, std::size_t R = kFRows>
inline void gram_micro_f(const float* __restrict pf, std::size_t npf, std::size_t r0, std::size_t r1,
                         std::size_t i0, std::size_t j0, double* __restrict Gb) {
  VF acc[R][NV];
  for (std::size_t r = 0; r < R; ++r)
    for (std::size_t v = 0; v < NV; ++v) acc[r][v] = vf_zero();
#pragma GCC unroll 4
  for (std::size_t c = r0; c < r1; ++c) {
    const float* p = pf + c * npf;
    VF b[NV];
    for (std::size_t v = 0; v < NV; ++v) b[v] = vf_load(p + j0 + v * kFW);
    for (std::size_t r = 0; r < R; ++r) {
      VF a = vf_bcast(p + i0 + r);
      // One broadcast load per row, held in a register (folded into each
      // multiply-add as an embedded broadcast it costs a load per FMA).
      __asm__("" : "+v"(a));
      for (std::size_t v = 0; v < NV; ++v) acc[r][v] = vf_fma(a, b[v], acc[r][v]);
    }
  }
  for (std::size_t r = 0; r < R; ++r)
    for (std::size_t v = 0; v < NV; ++v) vf_flush(Gb + (i0 + r) * npf + j0 + v * kFW, acc[r][v]);
}

// 8 rows' coordinates [src, src + 8) transposed into pf (an 8 x 8 transpose
// in ymm registers: unpack, shuffle, cross-lane permute).
inline void pack_8x8_f(const float* const* rows, std::size_t i0, std::size_t src, std::size_t c, float* pf,
                       std::size_t npf) {
  __m256 r[8], t[8], s[8];
  for (int q = 0; q < 8; ++q) r[q] = _mm256_loadu_ps(rows[i0 + std::size_t(q)] + src);
  for (int q = 0; q < 8; q += 2) {
    t[q] = _mm256_unpacklo_ps(r[q], r[q + 1]);  // rows q, q+1 at coordinates 0, 1 | 4, 5
    t[q + 1] = _mm256_unpackhi_ps(r[q], r[q + 1]);  // 2, 3 | 6, 7
  }
  for (int q = 0; q < 8; q += 4) {
    s[q] = _mm256_shuffle_ps(t[q], t[q + 2], _MM_SHUFFLE(1, 0, 1, 0));      // rows q..q+3, coordinate 0 | 4
    s[q + 1] = _mm256_shuffle_ps(t[q], t[q + 2], _MM_SHUFFLE(3, 2, 3, 2));  // 1 | 5
    s[q + 2] = _mm256_shuffle_ps(t[q + 1], t[q + 3], _MM_SHUFFLE(1, 0, 1, 0));  // 2 | 6
    s[q + 3] = _mm256_shuffle_ps(t[q + 1], t[q + 3], _MM_SHUFFLE(3, 2, 3, 2));  // 3 | 7
  }
  for (int q = 0; q < 4; ++q) {
    _mm256_storeu_ps(pf + (c + std::size_t(q)) * npf + i0, _mm256_permute2f128_ps(s[q], s[q + 4], 0x20));
    _mm256_storeu_ps(pf + (c + std::size_t(q) + 4) * npf + i0, _mm256_permute2f128_ps(s[q], s[q + 4], 0x31));
  }
}

// Coordinates packed at once by the float Gram kernel: a power of two
// between kGramRunF and 1024 with tile * npf floats <= 256 KiB (L2). Depends
// on n only.
inline std::size_t gram_tile_f(std::size_t npf) {
  std::size_t tile = 1024;
  while (tile > kGramRunF && tile * npf * sizeof(float) > (std::size_t(256) << 10)) tile /= 2;
  return tile;
}

// The float Gram matrix of rows [c0, c1) into Gb (npf x npf doubles); pf:
// gram_tile_f(npf) * npf floats of scratch. The block is walked in tiles: a
// tile's coordinates are packed (8 x 8 transposes, 8 rows at a time: few
// concurrent streams for the hardware prefetcher), then run by run (32
// packed coordinates, in L1) the whole triangle is computed on them; the
// next tile's lines are hinted to the prefetcher (into L2) a few per
// micro-kernel call. Row groups stop at n rounded up to kFRows (no
// padding-only group).
void gram_block_f(const float* const* rows, std::size_t n, std::size_t d, std::size_t c0, std::size_t c1,
                  float* pf, double* Gb) {
  const std::size_t npf = gram_npf(n), full = gram_fullf(npf);
  const std::size_t nr = (n + kFRows - 1) / kFRows * kFRows;  // rows that are not only padding
  const std::size_t tile = gram_tile_f(npf);
  std::fill(Gb, Gb + npf * npf, 0.0);
  std::fill(pf, pf + tile * npf, 0.0f);  // padding columns i >= n stay 0
  std::size_t ncalls = 0;  // micro-kernel calls per run
  for (std::size_t j0 = 0; j0 < full; j0 += 2 * kFW) ncalls += (std::min(j0 + 2 * kFW, nr) + kFRows - 1) / kFRows;
  if (full < npf) ncalls += (nr - full) / kFRows * (full / (2 * kFW) + 1);
  ncalls *= tile / kGramRunF;  // per whole tile
  for (std::size_t t0 = c0; t0 < c1; t0 += tile) {
    const std::size_t len = std::min(tile, c1 - t0);
    SpreadHints<float> hint(rows, t0 + tile, tile * sizeof(float) / 64, n, t0 + 2 * tile <= d, ncalls);
    const std::size_t len8 = len / 8 * 8;
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8)
      for (std::size_t cc = 0; cc < len8; cc += 8) pack_8x8_f(rows, i, t0 + cc, cc, pf, npf);
    for (std::size_t r = 0; r < i; ++r)
      for (std::size_t c = len8; c < len; ++c) pf[c * npf + r] = rows[r][t0 + c];
    for (; i < n; ++i)
      for (std::size_t c = 0; c < len; ++c) pf[c * npf + i] = rows[i][t0 + c];
    for (std::size_t r0 = 0; r0 < len; r0 += kGramRunF) {
      const std::size_t r1 = std::min(len, r0 + kGramRunF);
      for (std::size_t j0 = 0; j0 < full; j0 += 2 * kFW) {
        for (std::size_t i0 = 0; i0 < std::min(j0 + kFW, nr); i0 += kFRows) {
          hint();
          gram_micro_f<2>(pf, npf, r0, r1, i0, j0, Gb);
        }
        // The diagonal block's lower half of rows needs its upper vector of
        // columns only (pairs i < j).
        for (std::size_t i0 = j0 + kFW; i0 < std::min(j0 + 2 * kFW, nr); i0 += kFRows) {
          hint();
          gram_micro_f<1>(pf, npf, r0, r1, i0, j0 + kFW, Gb);
        }
      }
      for (std::size_t i0 = full; i0 < nr; i0 += kFRows) {  // the odd last vector of columns, transposed
        // A last group of at most half a group of real rows (n = 100: rows
        // 96..99) takes the half-height kernel: no multiply-add on padding.
        const bool half = n - i0 <= kFRows / 2;
        for (std::size_t j0 = 0; j0 < full; j0 += 2 * kFW) {
          hint();
          if (half)
            gram_micro_f<2, kFRows / 2>(pf, npf, r0, r1, i0, j0, Gb);
          else
            gram_micro_f<2>(pf, npf, r0, r1, i0, j0, Gb);
        }
        hint();
        if (half)
          gram_micro_f<1, kFRows / 2>(pf, npf, r0, r1, i0, full, Gb);
        else
          gram_micro_f<1>(pf, npf, r0, r1, i0, full, Gb);
      }
    }
  }
}

// Both float kernels' read-out of a block from its float Gram matrix Gb
// (gram_guard's layout): the guard with the float bounds; false, having kept
// nothing, when more than a quarter of the pairs fail it (the caller hands
// the block to its fallback kernel); otherwise the failing pairs in the exact
// form, counted in *exact.
bool keep_float_block(const float* const* rows, std::size_t n, std::size_t c0, std::size_t c1, const double* Gb,
                      std::size_t ld, std::size_t full, double* part, unsigned char* bad, std::size_t* exact) {
  const std::size_t nu =
      gram_guard(rows, n, c0, c1, Gb, ld, full, kGramSafeF, kGramTinyF * double(c1 - c0), part, bad);
  if (nu > n * (n - 1) / 2 / 4) return false;
  fill_exact(rows, n, c0, c1, part);
  *exact += nu;
  return true;
}

// One block by the float Gram kernel: part[npairs], bad[n] as
// distance_block_gram. Returns false, having written nothing the caller keeps,
// when more than a quarter of the pairs fail the guard (the caller then runs
// the double kernel on the block).
bool distance_block_gram_f(const float* const* rows, std::size_t n, std::size_t d, std::size_t c0,
                           std::size_t c1, float* pf, double* Gb, double* part, unsigned char* bad,
                           std::size_t* exact) {
  const std::size_t npf = gram_npf(n), full = gram_fullf(npf);
  gram_block_f(rows, n, d, c0, c1, pf, Gb);
  return keep_float_block(rows, n, c0, c1, Gb, npf, full, part, bad, exact);
}

// ---- Lane-wise float Gram kernel (selection rules, float input, n <= kGramMinN) --
//
// At n <= kGramMinN the rows are too few for the packed kernel above (its
// columns are padded to vectors of rows: at n = 20, 40 multiply-adds of 16
// lanes per coordinate for 210 Gram entries) and the exact kernel spends a
// subtraction and a multiply-add per pair and coordinate (190 pairs: 24
// vector operations per coordinate, plus its per-tile folds). This kernel
// keeps the coordinates in the vector lanes, as the exact kernel does, and
// computes the Gram entries: one multiply-add per entry and coordinate (n =
// 20: 13 vector FMAs per coordinate), then the same guard and fallbacks as the
// packed float kernel. Used by pairwise_sqdist_select on float input with
// n <= kGramMinN where lane_worth(n), on the FMA targets.
//  - Lanes: entry (i, j), i <= j, accumulates x_ic * x_jc in float lane
//    (c - t0) % 16 of its accumulator, by fused multiply-adds in coordinate
//    order, over a tile [t0, t0 + 256) (kLaneTileF): each lane sums 16
//    products from 0 (a tile's last len % 16 coordinates are one more step
//    on zero-padded copies: the padding adds 0 * 0). At the end
//    of the tile lane l and lane l + 8 are added in double to the entry's
//    double lane l (l < 8); at the end of the block the 8 double lanes are
//    folded in fold_8's order. The register blocking (4 x 4 entries with
//    AVX-512, 2 x 2 with AVX2; rows padded with zero rows to the block size)
//    does not change any lane's operations: avx2 and avx512 give the same
//    bits.
//  - Rounding: each lane is a run of 16 products summed by FMA, half a run
//    of the packed kernel: its bound (2 gamma_32 (G_ii + G_jj) + 4 len
//    2^-150 on g) holds a fortiori, with the same guard (kGramSafeF,
//    kGramTinyF): a kept Gram form is within 6.2e-5 of the exact distance
//    (in fact 3.1e-5 with gamma_16; typically ~1e-9).
//  - Measured (2-core AMD EPYC Zen 4 VM, float32, distance pass alone): n = 20,
//    d = 1e6 / 1e7: 0.65-0.77x the exact kernel's time; n = 32: 0.5-0.6x.
//    Per coordinate it does (n rounded up to 4)(n rounded up to 4 + 1) / 2
//    multiply-adds against the exact kernel's n (n - 1) (a difference and a
//    multiply-add per pair): it is used where that is under 4/5 of the exact
//    kernel's count (lane_worth: n = 8, 11, 12, 14..32; at n = 10 both
//    measured the same, at n = 5, 6 the padding made it 1.6x slower). The
//    choice depends on n only, never on the ISA's register blocking.
//  - Unsafe pairs take sqdist_double from the block in cache; a block with
//    more than a quarter of its pairs unsafe is computed again by the exact
//    kernel (distance_block_exact), and block 0's decision holds for the
//    whole pass (>= 8 blocks), as for the packed kernel.
constexpr std::size_t kLaneF = 16;                       // float lanes per accumulator
constexpr std::size_t kLaneTileF = 256;  // coordinates per tile: 16 products per lane
// The tile the hints fetch: 2 ahead (1 ahead left the rows' first loads waiting
// on memory: n = 20, d = 1e7, 2 threads, the pass alone 53-60 ms, 2 ahead
// 43-47 ms, 3 or 4 ahead 46-48 ms; AMD Zen 4 host).
constexpr std::size_t kLaneLead = 2;
constexpr std::size_t kLaneUnits = kLaneF / kFW;         // vectors per accumulator: 1 (AVX-512) or 2 (AVX2)
#if defined(__AVX512F__)
constexpr std::size_t kLaneRows = 4;  // 4 x 4 accumulators + 8 loaded vectors: 24 of 32 zmm
#else
constexpr std::size_t kLaneRows = 2;  // 2 x 2 x 2 ymm accumulators + 4 loaded: 12 of 16 ymm
#endif
alignas(64) const float kLaneZeros[kLaneTileF] = {};  // a padding row's tile

// g[l] += double(lane l) + double(lane l + 8), l < 8 (lanes 0..15: a0, then
// a1 with AVX2; values, not an array: GCC then keeps the accumulators in
// registers).
inline void lane_flush(double* g, VF a0, VF a1) {
#if defined(__AVX512F__)
  (void)a1;
  const __m512d a = _mm512_castps_pd(a0);
  const __m512d lo =
      _mm512_maskz_cvtps_pd(__mmask8(0xFF), _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(__mmask8(0xF), a, 0)));
  const __m512d hi =
      _mm512_maskz_cvtps_pd(__mmask8(0xFF), _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(__mmask8(0xF), a, 1)));
  _mm512_storeu_pd(g, _mm512_add_pd(_mm512_loadu_pd(g), _mm512_add_pd(lo, hi)));
#else
  const __m256d l0 = _mm256_cvtps_pd(_mm256_castps256_ps128(a0));    // lanes 0..3
  const __m256d l1 = _mm256_cvtps_pd(_mm256_extractf128_ps(a0, 1));  // 4..7
  const __m256d h0 = _mm256_cvtps_pd(_mm256_castps256_ps128(a1));    // 8..11
  const __m256d h1 = _mm256_cvtps_pd(_mm256_extractf128_ps(a1, 1));  // 12..15
  _mm256_storeu_pd(g, _mm256_add_pd(_mm256_loadu_pd(g), _mm256_add_pd(l0, h0)));
  _mm256_storeu_pd(g + 4, _mm256_add_pd(_mm256_loadu_pd(g + 4), _mm256_add_pd(l1, h1)));
#endif
}

// One step of 16 coordinates at c for the entries (r, s), r, s < kLaneRows,
// of rows xi[r] and xj[s] (Diag: xi == xj and r <= s only).
template <bool Diag>
__attribute__((always_inline)) inline void lane_step(const float* const* xi, const float* const* xj, std::size_t c,
                                                     VF (&acc)[kLaneRows][kLaneRows][kLaneUnits]) {
  constexpr std::size_t R = kLaneRows;
  for (std::size_t u = 0; u < kLaneUnits; ++u) {
    VF a[R], b[R];
    for (std::size_t r = 0; r < R; ++r) a[r] = vf_load(xi[r] + c + u * kFW);
    for (std::size_t s = 0; s < R; ++s) b[s] = Diag ? a[s] : vf_load(xj[s] + c + u * kFW);
    for (std::size_t r = 0; r < R; ++r)
      for (std::size_t s = Diag ? r : 0; s < R; ++s) acc[r][s][u] = vf_fma(a[r], b[s], acc[r][s][u]);
  }
}
// One tile's runs for the entries (i0 + r, j0 + s), r, s < kLaneRows (Diag:
// i0 == j0 and r <= s only): x[q] = row q's tile (len16 coordinates, a
// multiple of 16: the last tile of d comes zero-padded from view_tile);
// flushed into gl (entry (i, j) at gl + (i * np + j) * 8).
template <bool Diag>
inline void lane_micro(const float* const* x, std::size_t len16, std::size_t i0, std::size_t j0, std::size_t np,
                       double* gl) {
  constexpr std::size_t R = kLaneRows;
  VF acc[R][R][kLaneUnits];
  for (std::size_t r = 0; r < R; ++r)
    for (std::size_t s = 0; s < R; ++s)
      for (std::size_t u = 0; u < kLaneUnits; ++u) acc[r][s][u] = vf_zero();
#pragma GCC unroll 2
  for (std::size_t c = 0; c < len16; c += kLaneF) lane_step<Diag>(x + i0, x + j0, c, acc);
  for (std::size_t r = 0; r < R; ++r)
    for (std::size_t s = Diag ? r : 0; s < R; ++s)
      lane_flush(gl + ((i0 + r) * np + j0 + s) * 8, acc[r][s][0], acc[r][s][kLaneUnits - 1]);
}

inline std::size_t lane_np(std::size_t n) { return (n + kLaneRows - 1) / kLaneRows * kLaneRows; }
inline bool lane_worth(std::size_t n) {
  const std::size_t n4 = (n + 3) / 4 * 4;
  return n >= 2 && 5 * (n4 * (n4 + 1) / 2) < 4 * n * (n - 1);
}
// A thread's scratch: np * np * 8 double lanes + n * n Gram entries (doubles);
// np row pointers and a staged tile of n rows (floats, with room to start it
// on a line: the padded last tile of d).
inline std::size_t lane_scratch_doubles(std::size_t n) { return lane_np(n) * lane_np(n) * 8 + n * n; }
inline std::size_t lane_scratch_floats(std::size_t n) { return n * kLaneTileF + 16; }

// One block [c0, c1) by the lane-wise kernel: part[npairs], bad[n] as
// distance_block_gram; false (nothing the caller keeps written) when more than
// a quarter of the pairs fail the guard. sc: lane_scratch_doubles(n), tf:
// lane_scratch_floats(n), ptr: lane_np(n) pointers. Tiles are read in place,
// through view_tile: only the last tile of d is staged, zero-padded to 16.
// Staging the tiles whose rows are off a line as the exact kernel does was
// slower here (krum n = 16..32, d = 1e6 / 1e7: 1.2-1.3x): with 8 loads per
// 16 multiply-adds this kernel loses less to straddling loads than the
// copy costs.
bool distance_block_lane_f(const float* const* rows, std::size_t n, std::size_t d, std::size_t c0,
                           std::size_t c1, double* sc, float* tf, const float** ptr, double* part,
                           unsigned char* bad, std::size_t* exact) {
  const std::size_t np = lane_np(n), ng = np / kLaneRows;
  double* gl = sc;
  double* Gb = sc + np * np * 8;
  std::fill(gl, gl + np * np * 8, 0.0);
  const float** x = ptr;
  for (std::size_t q = n; q < np; ++q) x[q] = kLaneZeros;
  float* stage = to_line<float>(tf);
  for (std::size_t t0 = c0; t0 < c1; t0 += kLaneTileF) {
    std::size_t len16 = 0;
    const TileRows<float> v =
        view_tile(rows, n, t0, std::min(kLaneTileF, c1 - t0), kLaneTileF, kLaneF, false, stage, &len16);
    for (std::size_t q = 0; q < n; ++q) x[q] = v[q];
    SpreadHints<float> hint(rows, t0 + kLaneLead * kLaneTileF, kLaneTileF * sizeof(float) / 64, n,
                            t0 + (kLaneLead + 1) * kLaneTileF <= d, ng * (ng + 1) / 2);
    for (std::size_t gi = 0; gi < ng; ++gi) {
      hint();
      lane_micro<true>(x, len16, gi * kLaneRows, gi * kLaneRows, np, gl);
      for (std::size_t gj = gi + 1; gj < ng; ++gj) {
        hint();
        lane_micro<false>(x, len16, gi * kLaneRows, gj * kLaneRows, np, gl);
      }
    }
  }
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = i; j < n; ++j) Gb[i * n + j] = fold_8(gl + (i * np + j) * 8);
  return keep_float_block(rows, n, c0, c1, Gb, n, n, part, bad, exact);
}
#else
#define PYAGG_FLOAT_GRAM 0
#endif

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

// The selection rules' distance matrix (pairwise_sqdist_select).
template <typename T>
std::vector<double> distance_matrix(const T* const* rows, std::size_t n, std::size_t d) {
  std::vector<double> D(n * n);
  pairwise_sqdist_select<T>(rows, n, d, D.data(), nullptr, nullptr);
  return D;
}

}  // namespace

// ---- pairwise_sqdist --------------------------------------------------------
template <typename T>
void pairwise_sqdist(const T* const* rows, std::size_t n, std::size_t d, double* D) {
  pairwise_sqdist_counted<T>(rows, n, d, D, nullptr);
}

// Rows from which the Gram kernel replaces the exact kernel. Measured (2-core
// AVX-512 VM): at n = 20 the exact kernel's 190 float-lane differences per
// coordinate beat the Gram kernel's padded double multiply-adds (6.5 vs
// 16 ms at d = 1e6); at n = 100 the Gram kernel is 4x faster (138 vs 589 ms).
using ::pyagg::kGramMinN;  // common/blocks.h (the CUDA geometric median reads it too)

namespace {
// The distance pass; with norm_part (nblocks * n doubles) also every row's
// block sum of squares, the bits of reduce.h's block_sumsq_finite of the
// block, taken tile by tile from the tile in L1 (Gram path: as each tile is
// packed; exact path: once a tile's pairs are done): row_sqnorms's partials,
// in its layout.
// select: the caller only ranks distances (the selection rules): float input
// may take a float Gram kernel (PYAGG_FLOAT_GRAM targets, no norms wanted: the
// packed one for n > kGramMinN, the lane-wise one for n <= kGramMinN where
// lane_worth(n));
// *dp_blocks (if not null) = the blocks a float kernel did not compute (the
// double Gram kernel's, or the exact kernel's at n <= kGramMinN: all of them
// when no float kernel is used).
template <typename T>
void distance_pass(const T* const* rows, std::size_t n, std::size_t d, double* D, std::size_t* exact,
                   double* norm_part, bool select = false, std::size_t* dp_blocks = nullptr) {
  const bool gram = n > kGramMinN;
  const std::size_t np = gram_np(n);
  const std::size_t lanes = (gram && norm_part) ? n * reduce::kLanes : 0;  // the Gram kernel's norm lanes
  const int nthreads = reduce::threads_for(n * d);
#if PYAGG_FLOAT_GRAM
  const bool fsel = std::is_same<T, float>::value && select && !norm_part;
  const bool fgram = fsel && gram;         // the packed float Gram kernel
  const bool lgram = fsel && !gram && lane_worth(n);  // the lane-wise float Gram kernel
  const std::size_t npf = fgram ? gram_npf(n) : 0;
  // a thread's packed float tile, or its staged tile (lane-wise kernel)
  const std::size_t fslot = fgram ? gram_tile_f(npf) * npf : (lgram ? lane_scratch_floats(n) : 0);
  std::vector<float> fscratch(std::size_t(nthreads) * fslot);
  std::vector<const float*> lptr(lgram ? std::size_t(nthreads) * lane_np(n) : 0);
  const std::size_t lslot = lgram ? lane_scratch_doubles(n) : 0;
#else
  const bool fgram = false, lgram = false;
  const std::size_t npf = 0, lslot = 0;
  (void)select;
#endif
  const std::size_t nblocks = (d + kReduceBlock - 1) / kReduceBlock;
  const bool first_alone = (fgram || lgram) && nblocks >= 8;
  bool all_double = false;  // block 0 needed the fallback kernel: so do the others (set before they start)
  (void)all_double;          // (read by the float kernels' targets only)
  const std::size_t tile = distance_tile<T>(n);
  const std::size_t per_thread =
      gram ? kGramTile * np + np * np + lanes + npf * npf : std::max(exact_scratch_doubles<T>(n, tile), lslot);
  std::vector<std::size_t> nexact(std::size_t(nthreads), 0), ndouble(std::size_t(nthreads), 0);
  run_distance_blocks(
      n, d, per_thread,
      [&](std::size_t c0, std::size_t c1, int t, double* sc, double* pb, unsigned char* bb) {
        double* np_b = norm_part ? norm_part + (c0 / kReduceBlock) * n : nullptr;
#if PYAGG_FLOAT_GRAM
        if constexpr (std::is_same<T, float>::value) {
          if ((fgram || lgram) && !all_double) {
            float* fs = fscratch.data() + std::size_t(t) * fslot;
            if (fgram ? distance_block_gram_f(rows, n, d, c0, c1, fs, sc + kGramTile * np + np * np + lanes, pb, bb,
                                              &nexact[std::size_t(t)])
                      : distance_block_lane_f(rows, n, d, c0, c1, sc, fs,
                                              lptr.data() + std::size_t(t) * lane_np(n), pb, bb,
                                              &nexact[std::size_t(t)]))
              return;
            if (first_alone && c0 == 0) all_double = true;  // block 0 runs alone: no reader yet
          }
        }
#endif
        ++ndouble[std::size_t(t)];  // the fallback (or only) kernel
        if (gram) {
          distance_block_gram<T>(rows, n, d, c0, c1, sc, sc + kGramTile * np, pb, bb, &nexact[std::size_t(t)], np_b,
                                 sc + kGramTile * np + np * np);
          return;  // norms from the tiles
        }
        distance_block_exact<T>(rows, n, d, c0, c1, tile, sc, pb, bb, np_b);  // norms from the tiles too
      },
      D, first_alone);
  if (exact) {
    *exact = 0;
    for (std::size_t v : nexact) *exact += v;
  }
  if (dp_blocks) {
    *dp_blocks = 0;
    for (std::size_t v : ndouble) *dp_blocks += v;
  }
}
}  // namespace

template <typename T>
void pairwise_sqdist_counted(const T* const* rows, std::size_t n, std::size_t d, double* D, std::size_t* exact) {
  distance_pass<T>(rows, n, d, D, exact, nullptr);
}

template <typename T>
void pairwise_sqdist_select(const T* const* rows, std::size_t n, std::size_t d, double* D, std::size_t* exact,
                            std::size_t* dp_blocks) {
  distance_pass<T>(rows, n, d, D, exact, nullptr, true, dp_blocks);
}

// pairwise_sqdist and, in the same pass over G, sq[i] = ||x_i||^2 with the
// bits of reduce::row_sqnorms (each block's norms from the block in cache).
template <typename T>
void pairwise_sqdist_norms(const T* const* rows, std::size_t n, std::size_t d, double* D, double* sq) {
  const std::size_t nb = reduce::num_blocks(d);
  std::vector<double> part(nb * n);
  distance_pass<T>(rows, n, d, D, nullptr, part.data());
  for (std::size_t i = 0; i < n; ++i) sq[i] = reduce::combine_blocks(part.data() + i, nb, n);
}

// ---- exact_kernel_rel_bound --------------------------------------------------
// distance_block_exact's rounding, lane by lane: a term fl(fl(x_ic - x_jc)^2)
// (or its fused multiply-add into the lane) is within gamma_3 of (x_ic -
// x_jc)^2; a lane's recursive sum of its k = tile / kLanes terms from 0 adds
// gamma_{k-1}: all non-negative, gamma_{k+2} of the lane's exact sum. In
// double, a lane's sum then passes through at most 2 additions (fold_to8),
// tiles_per_block - 1 (the tiles of a block, dl), 3 (fold_8) and nblocks - 1
// (combine_distance_blocks): gamma_{tiles_per_block + nblocks + 3} in double.
// Float lanes: squares below the normal range are off by up to 2^-150
// absolute; a block sum kept in float form has a mean term >= 2^-100
// (distance_block_exact recomputes the others in double), so that adds at
// most 2^-50 relative. Double lanes: the bound assumes no square underflows
// double (every nonzero |x_ic - x_jc| above 2^-511). The sum of the bounds
// bounds their product up to a term below 1e-20.
template <typename LaneT>
double exact_kernel_rel_bound(std::size_t n, std::size_t d) {
  auto gamma = [](double k, double u) { return k * u / (1.0 - k * u); };
  const bool is_float = std::is_same<LaneT, float>::value;
  const double u = is_float ? 0x1p-24 : 0x1p-53;
  const std::size_t tile = distance_tile<LaneT>(n);
  const double k = double(tile / std::size_t(kLanes<LaneT>));
  const double folds = double(kReduceBlock / tile + (d + kReduceBlock - 1) / kReduceBlock + 4);
  return gamma(k + 2.0, u) + gamma(folds, 0x1p-53) + (is_float ? 0x1p-50 : 0.0);
}
template double exact_kernel_rel_bound<float>(std::size_t, std::size_t);
template double exact_kernel_rel_bound<double>(std::size_t, std::size_t);

// ---- pairwise_sqdist_exact_double --------------------------------------------
// The difference form in double lanes for every n and both dtypes (float rows
// are converted to double per block, which is exact): every D_ij to ~1e-15
// relative. Used by the coefficient-space geometric median when its quadratic
// forms cancel too much for pairwise_sqdist's accuracy (iterative.cpp). Same
// blocks, non-finite semantics and determinism as pairwise_sqdist.
template <typename T>
void pairwise_sqdist_exact_double(const T* const* rows, std::size_t n, std::size_t d, double* D) {
  constexpr bool is_double = std::is_same<T, double>::value;
  const std::size_t tile = distance_tile<double>(n);
  const std::size_t ex = exact_scratch_doubles<double>(n, tile);
  // a thread's block of rows in double, on 64-byte lines (the kernel then reads
  // its full tiles in place)
  const std::size_t conv = is_double ? 0 : n * kReduceBlock + 8;
  std::vector<const double*> ptrs(std::size_t(reduce::threads_for(n * d)) * n);
  run_distance_blocks(
      n, d, ex + conv,
      [&](std::size_t c0, std::size_t c1, int t, double* sc, double* pb, unsigned char* bb) {
        if constexpr (is_double) {
          distance_block_exact<double>(rows, n, d, c0, c1, tile, sc, pb, bb);
        } else {
          const std::size_t len = c1 - c0;
          double* cv = to_line<double>(sc + ex);
          const double** rp = ptrs.data() + std::size_t(t) * n;
          for (std::size_t i = 0; i < n; ++i) {
            const T* x = rows[i] + c0;
            double* y = cv + i * kReduceBlock;
            for (std::size_t c = 0; c < len; ++c) y[c] = static_cast<double>(x[c]);
            rp[i] = y;
          }
          distance_block_exact<double>(rp, n, len, 0, len, tile, sc, pb, bb);
        }
      },
      D);
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
  MeanSets ms;
  for (const auto& st : sets) ms.add(st.data(), st.size());
  MeanSets freq;
  // The rounds' rows by frequency (their shared prefixes), for the chunks of
  // float rows where every sum is exact (the same bits), when its trie saves
  // three quarters of the additions: the exactness test reads the chunk once
  // more (n = 20, f = 4, far rows: 55 -> 26 additions per coordinate, 1.04x
  // at d = 1e7 and 1.6x at d = 1e6 with the test; n = 100: 2813 -> 157, 0.78x).
  const MeanSets* alt = finish_sets<T>(ms, freq, n);
  if (theta <= netbuild::kStaticSortN) {
    // Few rounds: per chunk of coordinates, the rounds' means go to a
    // per-thread theta x chunk buffer (L1/L2) and the coordinate phase runs
    // on it at once, in the same thread (its compile-time network costs
    // nothing to set up): nothing of size theta x d is written.
    const int nthreads = reduce::threads_for(n * d);
    std::unique_ptr<T[]> cbuf(new T[std::size_t(nthreads) * theta * kMeanChunk]);
    std::vector<T*> crows(std::size_t(nthreads) * theta);
    for (std::size_t t = 0; t < crows.size(); ++t) crows[t] = cbuf.get() + t * kMeanChunk;
    mean_sets_chunks<T>(
        ms, rows, 0, d, kMeanChunk, nthreads,
        [&](std::size_t k, std::size_t, std::size_t th) { return crows[th * theta + k]; },
        [&](std::size_t c0, std::size_t len, std::size_t th) {
          // serial: a chunk is small
          averaged_upper_median<T>(crows.data() + th * theta, theta, len, theta - 2 * f, out + c0);
        },
        alt);
    return;
  }
  // The theta contribution rows, materialised span by span in a theta x span
  // buffer of T of ~4 MiB (span: a multiple of kReduceBlock, so that every
  // span but the last is whole tiles of the coordinate phase), reused for
  // every span: the buffer stays in the last-level cache and its pages are
  // touched once. (A whole-d buffer was 40 MB at n = 20, d = 1e6: the rounds'
  // means went to memory and back, and its page faults alone cost ~20% of the
  // rule.) The coordinate phase is per coordinate, so the span changes nothing
  // in the result. Per chunk of coordinates, all theta rounds are summed from
  // the same cached slice of G.
  constexpr std::size_t kBmkBufferBytes = std::size_t(4) << 20;
  std::size_t span = kBmkBufferBytes / (theta * sizeof(T)) / kReduceBlock * kReduceBlock;
  span = std::min(d, std::max(span, kReduceBlock));
  std::unique_ptr<T[]> buf(new T[theta * span]);  // default-initialised: no memset
  std::vector<const T*> brows(theta);
  for (std::size_t t = 0; t < theta; ++t) brows[t] = buf.get() + t * span;
  // All theta rounds' means per chunk, from one read of it (mean_sets_chunk).
  for (std::size_t s0 = 0; s0 < d; s0 += span) {
    const std::size_t len = std::min(span, d - s0);
    mean_sets_chunks<T>(
        ms, rows, s0, s0 + len, kMeanChunk, reduce::threads_for(n * len),
        [&](std::size_t k, std::size_t c0, std::size_t) { return buf.get() + k * span + (c0 - s0); },
        [](std::size_t, std::size_t, std::size_t) {}, alt);
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
  // The distinct sets' means per chunk of coordinates, all from one read of
  // the chunk (rowmean.h mean_sets_chunk); rows sharing a set copy its mean.
  MeanSets ms;
  std::vector<std::size_t> first;  // the output row of each distinct set
  for (std::size_t i = 0; i < n; ++i)
    if (same[i] == i) {
      ms.add(sel.data() + i * s, s);
      first.push_back(i);
    }
  // By frequency (float rows, exact chunks: the same bits), the sets share
  // the rows most of them name as one prefix: n = 100, f = 20, 20 far rows:
  // 21 distinct sets of 80, 1659 -> 204 additions per coordinate.
  MeanSets freq;
  const MeanSets* alt = finish_sets<T>(ms, freq, n);
  mean_sets_chunks<T>(
      ms, rows, 0, d, kMeanChunk, reduce::threads_for(n * d),
      [&](std::size_t k, std::size_t c0, std::size_t) { return out + first[k] * d + c0; },
      [&](std::size_t c0, std::size_t len, std::size_t) {
        for (std::size_t i = 0; i < n; ++i)
          if (same[i] != i) std::memcpy(out + i * d + c0, out + same[i] * d + c0, len * sizeof(T));
      },
      alt);
}

// ---- explicit instantiations ------------------------------------------------
#define PYAGG_DISTANCE_INSTANTIATE(T)                                                                   \
  template void pairwise_sqdist<T>(const T* const*, std::size_t, std::size_t, double*);               \
  template void pairwise_sqdist_counted<T>(const T* const*, std::size_t, std::size_t, double*, std::size_t*); \
  template void pairwise_sqdist_select<T>(const T* const*, std::size_t, std::size_t, double*, std::size_t*,     \
                                          std::size_t*);                                                      \
  template void pairwise_sqdist_norms<T>(const T* const*, std::size_t, std::size_t, double*, double*);           \
  template void pairwise_sqdist_exact_double<T>(const T* const*, std::size_t, std::size_t, double*);     \
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
