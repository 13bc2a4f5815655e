// pyagg engine — CPU (OpenMP) backend: internal interface.
//
// Every function here assumes its input was validated by the dispatch point
// (engine/src/rules.cpp): n >= the rule's bound, d >= 1, parameters resolved
// (m, beta are concrete numbers), pointers valid. Rows are given as n row
// pointers of d elements each (a contiguous n*d block is passed as
// base + i*d). Outputs never alias inputs.
//
// Kernels allocate their scratch memory before any parallel region (a
// std::bad_alloc is caught at the engine's door) and never throw inside one.
// Reductions are deterministic: coordinates are split in a fixed partition
// (kReduceBlock) independent of the thread count, partial sums are combined
// in a fixed order.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/blocks.h"
#include "pyagg/rules.h"

namespace pyagg {
namespace cpu {

// Coordinates per deterministic reduction block (fixed; not the thread count;
// common/blocks.h, shared with the CUDA backend).
using ::pyagg::kReduceBlock;

// Bytes of one native SIMD register of this copy's ISA level (each level is
// compiled separately, see CMakeLists.txt): the unit of every explicit-vector
// kernel (sortnet.h's comparators, reduce.h's accumulators, distance.cpp's
// tiles), so that no kernel holds vector-extension values wider than the
// registers (GCC then keeps them in memory).
#if defined(__AVX512F__)
constexpr std::size_t kVecBytes = 64;
#elif defined(__AVX__)
constexpr std::size_t kVecBytes = 32;
#else
constexpr std::size_t kVecBytes = 16;
#endif

// ---- coordinate-wise rules (coordinate.cpp) --------------------------------
template <typename T> void average(const T* const* rows, std::size_t n, std::size_t d, T* out);
template <typename T> void average_nan(const T* const* rows, std::size_t n, std::size_t d, T* out);
template <typename T> void median(const T* const* rows, std::size_t n, std::size_t d, T* out);
template <typename T>
void trimmed_mean(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out);
// Per coordinate: the mean of the `beta` values closest to the median of the
// finite values (ties -> smaller value). Also Bulyan's coordinate phase.
template <typename T>
void averaged_median(const T* const* rows, std::size_t n, std::size_t d, std::size_t beta, T* out);
// The same around the UPPER median (element k/2 of the k sorted finite values,
// whatever the parity of k): the coordinate phase of bulyan-multikrum.
template <typename T>
void averaged_upper_median(const T* const* rows, std::size_t n, std::size_t d, std::size_t beta, T* out);

// ---- iterative rules (iterative.cpp) ---------------------------------------
// Start at the coordinate-wise median (init="median"): direct iteration, one
// pass over the data per iteration.
template <typename T>
void geometric_median(const T* const* rows, std::size_t n, std::size_t d, double nu,
                      std::int64_t max_iter, double tol, T* out);
// Start at the mean of the finite rows (the default): iterated in coefficient
// space (common/select_iterative.h): one distance pass, one norm pass, one
// combination pass, whatever the iteration count.
template <typename T>
void geometric_median_mean_start(const T* const* rows, std::size_t n, std::size_t d, double nu,
                                 std::int64_t max_iter, double tol, T* out);
// state: previous output v (d elements) or nullptr for zeros.
template <typename T>
void centered_clipping(const T* const* rows, std::size_t n, std::size_t d, double tau,
                       std::int64_t iters, const T* state, T* out);

// ---- distance-based rules (distance.cpp) -----------------------------------
// D: n*n row-major, D[i*n+j] = squared L2 distance of rows i and j, computed
// in one blocked pass over the data: Gram form in double, with the exact
// difference form for each (pair, block) where the Gram form would cancel
// (distance < 2^-16 of the summed squared norms on that block); +inf when row
// i or row j holds a non-finite value; D[i*n+i]=0 for a finite row i.
template <typename T>
void pairwise_sqdist(const T* const* rows, std::size_t n, std::size_t d, double* D);
// The same, and *exact (if not null) = the number of (pair, block) sums that
// took the exact difference form instead of the Gram form (the cancellation
// guard; for tests and benchmarks).
template <typename T>
void pairwise_sqdist_counted(const T* const* rows, std::size_t n, std::size_t d, double* D, std::size_t* exact);
// The distance matrix of the selection rules (krum, multi-krum, bulyan,
// bulyan-multikrum, mda, nnm), which only rank distances: the same D, except
// that float input takes a float Gram kernel where the target has FMA
// (distance.cpp: the packed one for n > 32 rows, the lane-wise one for n =
// 8, 11, 12, 14..32): relative error <= 6.2e-5 per entry (~1e-8 on data
// without cancellation), exact difference form where the Gram form would
// cancel. *exact (if not null) = (pair, block) sums in the exact form;
// *dp_blocks (if not null) = blocks no float kernel computed (the double Gram
// kernel's, or the exact kernel's at n <= 32: every block where no float
// kernel is compiled in or used).
template <typename T>
void pairwise_sqdist_select(const T* const* rows, std::size_t n, std::size_t d, double* D, std::size_t* exact,
                            std::size_t* dp_blocks);
// The same D and, from the same pass over G, sq[i] = ||x_i||^2 with the bits of
// reduce.h's row_sqnorms (the coefficient-space geometric median needs both).
template <typename T>
void pairwise_sqdist_norms(const T* const* rows, std::size_t n, std::size_t d, double* D, double* sq);
// A rigorous bound on the relative error of every finite D_ij that the exact
// difference-form kernel returns: pairwise_sqdist / pairwise_sqdist_norms for
// n <= kGramMinN rows of T (LaneT = T: lanes of T, tile from n), and
// pairwise_sqdist_exact_double (LaneT = double: double lanes for both input
// types). gamma_{k+2} in LaneT for the k terms a lane sums per tile (each
// term a rounded difference, squared and rounded), plus gamma in double for
// the folds and the tile and block sums. Callers whose results depend on
// D's accuracy (the coefficient-space geometric median and centered
// clipping) read it here instead of repeating a figure.
template <typename LaneT>
double exact_kernel_rel_bound(std::size_t n, std::size_t d);
// The same D from the difference form in double for every n (float rows
// converted to double): ~1e-15 relative per entry, at the cost of ~n^2/2
// double differences per coordinate (the geometric median's refinement).
template <typename T>
void pairwise_sqdist_exact_double(const T* const* rows, std::size_t n, std::size_t d, double* D);

template <typename T> void krum(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out);
template <typename T>
void multi_krum(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, std::size_t m, T* out);
template <typename T> void bulyan(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out);
template <typename T>
void bulyan_multikrum(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, std::size_t m,
                      T* out);
template <typename T> void mda(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out);

// ---- pre-aggregators (distance.cpp: nnm; preagg.cpp: bucketing, clipping) ---
// out: n rows (nnm, clipping) or ceil(n/s) rows (bucketing), row-major.
template <typename T> void nnm(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out);
template <typename T>
void bucketing(const T* const* rows, std::size_t n, std::size_t d, std::size_t s, std::uint64_t seed,
               T* out);
// tau > 0: static clipping; tau == 0: adaptive robust clipping (ARC).
template <typename T>
void clipping(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, double tau, T* out);

// ---- a pre-aggregator fused with the rule that follows it (chain.cpp) --------
// The rule r (resolved for pre_output_rows(p, n) rows) applied to the output
// of pre-aggregator p on the n rows, without writing that output: for the
// pairs rules.cpp's chain_fusable() accepts (nnm, bucketing, clipping, zeroing before a
// coordinate-wise rule: the same bits as the unfused chain; nnm before krum,
// multi-krum, mda, bulyan: the rule's distances from nnm's, see chain.cpp).
template <typename T>
void pre_rule_fused(const PreConfig& p, const RuleConfig& r, const T* const* rows, std::size_t n, std::size_t d,
                    T* out);

// ---- dnc, clipped-clustering, smea, caf, zeroing (next.cpp, common/select_next.h) ---
// r: a resolved RuleConfig of one of those five rules.
template <typename T>
void rule_next(const RuleConfig& r, const T* const* rows, std::size_t n, std::size_t d, T* out);
// dnc with b < d (rule_next's path for it): ahead = copy every iteration's
// sampled coordinates during the row statistics pass (rule_next does where
// they fit), else gather them from G per iteration. The same bits either way.
template <typename T>
void dnc_sampled(const RuleConfig& r, const T* const* rows, std::size_t n, std::size_t d, bool ahead, T* out);
// Pre-aggregator: a row with ||x||_p > tau (or unusable) becomes zeros, the
// others are copied; norm_order 0 = inf, 1, 2.
template <typename T>
void zeroing_pre(const T* const* rows, std::size_t n, std::size_t d, double tau, int norm_order, T* out);

}  // namespace cpu
}  // namespace pyagg
