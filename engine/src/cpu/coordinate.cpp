// pyagg engine — CPU backend: coordinate-wise rules.
//
//   average          mean of the n rows (non-robust baseline: any non-finite
//                    input makes the coordinate non-finite). n >= 1.
//   average-nan      per coordinate, mean of the finite values. n >= 1.
//   median           coordinate-wise median (Yin et al., "Byzantine-robust
//                    distributed learning: towards optimal statistical rates",
//                    ICML 2018). n >= 2f+1.
//   trimmed-mean     coordinate-wise trimmed mean (Yin et al. 2018). n >= 2f+1.
//   averaged-median  "mean around median" (Xie, Koyejo, Gupta, "Generalized
//                    Byzantine-tolerant SGD", 2018; also the coordinate phase of
//                    Bulyan, El Mhamdi et al. ICML 2018). n >= 2f+1, beta = n-f.
//   Resilience: with at most f Byzantine rows and the bound above, each output
//   coordinate lies within the range of the honest values of that coordinate
//   (median, trimmed-mean, averaged-median), and it is finite whenever at most
//   f rows are non-finite.
//
// EXACT SEMANTICS (shared/spec/rules.md, made precise). "Non-finite" = NaN or
// +-inf. Every sum is accumulated in double and rounded to T once at the end.
//   average:         out[j] = (sum_{i=0..n-1} x_ij, in row order) / n.
//   average_nan:     out[j] = (sum of the finite x_ij, row order) / (their
//                    count k); k = 0 -> 0.
//   median:          over the k finite values of coordinate j sorted: k odd ->
//                    the middle one; k even -> (a + b) / 2 in double of the two
//                    middle ones (if a + b overflows a double, a/2 + b/2);
//                    k = 0 -> 0.
//   trimmed_mean(f): order the n values with -inf smallest and NaN as +inf
//                    (largest); drop the f smallest and the f largest; out =
//                    (sum of the n-2f others) / (n-2f). A kept value can only
//                    be non-finite (then so is the result) with > f non-finite
//                    values. The kept values are summed in the order the
//                    pruned network leaves them (deterministic).
//   averaged_median(beta): the k finite values sorted, s[0..k-1]; m = median
//                    as above (in double); the window of b = min(beta, k)
//                    values closest to m, ties -> the smaller value, i.e. the
//                    first b values in the order (|v - m|, v); out = (sum of the
//                    window in ascending order) / b. Non-finite values are never
//                    chosen; k = 0 -> 0. The window is the result of the
//                    two-pointer expansion from s[k/2] comparing
//                    (m - s[l-1]) <= (s[r] - m) -> take left; it is computed
//                    branch-free as [c, c+b) with c = #{ l in [0, n-beta) :
//                    (s[l+beta] - m) < (m - s[l]) } (the predicate is monotone
//                    in l; non-finite values sort as +inf so they never
//                    enter). Also Bulyan's coordinate phase (distance.cpp).
//   averaged_upper_median(beta): the same with m = s[k/2], the UPPER median
//                    (AggregaThor's Bulyan-over-Multi-Krum coordinate phase).
//
// DESIGN (the spec's "selection networks on tiles"):
//   Coordinates are processed in tiles of W = kTileBytes/sizeof(T) lanes (32
//   floats / 16 doubles). A tile is copied into an L1-resident n x W buffer,
//   one row vector per gradient, mapping non-finite values to +inf and
//   counting the finite values of each lane (rows are prefetched 1 KiB ahead).
//   For n <= 32 and a full tile the copy and the sort are one step
//   (TileSorter::load_sort): each register column of the rows goes from G
//   into registers, is sorted there, and only the wires the read-out reads
//   are stored; a column with a non-finite value (where lanes need counts)
//   takes the copy.
//   A sorting network (Batcher's odd-even merge sort, pruned to the outputs
//   the rule reads; sortnet.h) is then applied element-wise: each comparator
//   is a vector min/max over the lanes, no branch, no transposition. For
//   n <= 32 the network is a compile-time one, run with every wire of a tile
//   column in a SIMD register (no load/store per comparator: ~1.6x faster);
//   above, the same network is generated at run time and applied in the L1
//   buffer (when only exact wires are read, the network's first levels, which
//   sort each whole block of 32 wires on its own, run as the compile-time
//   32-wire network in registers: TileSorter); above kMaxNetworkN, a per-lane
//   std::sort of the same buffer. The
//   per-lane read-out (order statistics at lane-dependent positions, window
//   of the averaged median) works on groups of G = (SIMD bytes / 8) lanes
//   converted to double, with compares and blends. These loops are written
//   with GCC/Clang vector extensions (explicit SIMD, portable to any width),
//   not left to the auto-vectoriser. OpenMP: tiles are distributed with
//   schedule(static) (fewer threads for small inputs); each coordinate is
//   computed independently, so results do not depend on the thread count.
//   Scratch is allocated before the parallel regions; nothing in them throws.
//   The network only decides where values land, never their arithmetic: all
//   paths give the same bits, except the trimmed mean, whose kept values are
//   summed in the order the network leaves them (fully sorted for n <= 32;
//   above, whole 32-blocks sorted then the pruned merges; deterministic for a
//   given n and f).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "cpu/cpu_backend.h"
#include "cpu/reduce.h"
#include "cpu/rowmean.h"
#include "cpu/sortnet.h"

#if !defined(__GNUC__)
#error "coordinate.cpp uses GCC/Clang vector extensions (GCC or Clang required)"
#endif

namespace pyagg {
namespace cpu {
namespace {


// Tuned on a 2-core Cascade Lake VM (n = 20, d = 1e6): 128-byte tile rows
// (two cache lines per row and tile) beat 256; prefetching each row 1 KiB
// (8 tiles) ahead gains ~10% on the median.
constexpr std::size_t kTileBytes = 128;      // per row of a sorting tile (W = 32 floats, 16 doubles)
constexpr std::size_t kPrefetchBytes = 1024;  // software prefetch distance per row
// Coordinates of an average / average_nan / weighted-sum tile: 8 double
// accumulator vectors, enough independent additions to fill the adders. With
// 256 coordinates (32 vectors) GCC kept the sums on the stack: a load, add
// and store per vector and row (average, n = 20, d = 1e4: 37 us serial); 16
// vectors (the earlier choice, made on a Xeon) were 13% slower than 8 on the
// AMD EPYC host in cache (average, n = 20, d = 1e4, one thread: 17.6 -> 15.3
// us) and no faster from memory. Every loop over a tile's accumulator vectors
// is fully unrolled (#pragma GCC unroll): with a variable index GCC 12 kept
// the array's home on the stack, zeroed it per tile (rep stos) and staged the
// stores through it (average, n = 20, d = 1e5, two threads: 93 -> 83 us).
constexpr std::size_t kSumTileBytes = 8 * kVecBytes;
// average-nan keeps two accumulators per vector (a sum and a count): 8 vectors
// (16 accumulators) fill AVX2's and SSE2's 16 registers and GCC kept some on
// the stack (bench/asm_check.py: 12 stack operations per row), so its tile is
// half as wide there. Per coordinate the same operations: the same bits.
constexpr std::size_t kNanTileBytes = kVecBytes >= 64 ? kSumTileBytes : kSumTileBytes / 2;
// The sum kernels hint each row's next coordinates this many coordinates
// ahead, whatever the tile: far (2 KiB of float) into L2 when G streams from
// memory, near (one tile) into L1 when G is small enough to sit in cache,
// where the far hints (n rows x 2 KiB in flight: the whole L1 at n = 20)
// evicted lines before their use. Alternating runs (min of 3 each), n = 20,
// float32: d = 1e4 average 22.8 -> 19.5 us with the near distance; n = 100,
// d = 1e6 (400 MB) 4-10% slower with it, hence far there. The far hints went
// to L1 until the AMD EPYC host showed the cost (see prefetch_span): L2
// halves average's time there at n = 20, d = 1e7 (C++ harness, 44 -> 23 ms).
constexpr std::size_t kSumPrefetchFar = 512;
constexpr std::size_t kSumPrefetchNear = 128;
constexpr std::size_t kSumNearBytes = std::size_t(32) << 20;  // G up to this size: near
template <typename T>
struct SumPrefetch {
  bool far;
  std::size_t ahead;  // coordinates
  SumPrefetch(std::size_t rows, std::size_t d)
      : far(rows * d * sizeof(T) > kSumNearBytes), ahead(far ? kSumPrefetchFar : kSumPrefetchNear) {}
  // Hints coordinates [j0 + ahead, j0 + ahead + w) of a row whose tile at j0
  // is src (nothing past d).
  void operator()(const T* src, std::size_t j0, std::size_t w, std::size_t d) const {
    if (j0 + ahead + w > d) return;
    if (far)
      reduce::prefetch_span_l2(src + ahead, w * sizeof(T));
    else
      reduce::prefetch_span(src + ahead, w * sizeof(T));
  }
};
constexpr std::size_t kMaxNetworkN = netbuild::kMaxNetworkN;   // above: per-lane std::sort

// ---- explicit SIMD (vector extensions) ------------------------------------------
// Lanes per double vector; every read-out works on groups of G lanes in double.
constexpr std::size_t G = kVecBytes / sizeof(double);
typedef double VD __attribute__((vector_size(kVecBytes)));
typedef std::int64_t VI __attribute__((vector_size(kVecBytes)));
typedef std::uint64_t VUI __attribute__((vector_size(kVecBytes)));

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef std::int32_t Int;  // lane integer, same width as T
  typedef sortnet::Vec<float>::A V;   // full register of T, aligned (tile buffers)
  typedef sortnet::Vec<float>::U VU;  // same, unaligned (caller's rows)
  typedef std::int32_t VM __attribute__((vector_size(kVecBytes)));  // mask / counter of V
  typedef std::int32_t VMA __attribute__((vector_size(kVecBytes), aligned(4), may_alias));
  // G lanes of T / of lane integers, element-aligned, may alias
  typedef float H __attribute__((vector_size(G * sizeof(float)), aligned(4), may_alias));
  typedef std::int32_t HI __attribute__((vector_size(G * sizeof(float)), aligned(4), may_alias));
};
template <>
struct Simd<double> {
  typedef std::int64_t Int;
  typedef sortnet::Vec<double>::A V;
  typedef sortnet::Vec<double>::U VU;
  typedef std::int64_t VM __attribute__((vector_size(kVecBytes)));
  typedef std::int64_t VMA __attribute__((vector_size(kVecBytes), aligned(8), may_alias));
  typedef double H __attribute__((vector_size(kVecBytes), aligned(8), may_alias));
  typedef std::int64_t HI __attribute__((vector_size(kVecBytes), aligned(8), may_alias));
};
template <typename T>
using LaneInt = typename Simd<T>::Int;

template <typename T>
constexpr std::size_t tile_w() { return kTileBytes / sizeof(T); }

// G lanes of T at p, widened to double.
template <typename T>
inline __attribute__((always_inline)) VD load_d(const T* p) {
  return __builtin_convertvector(*reinterpret_cast<const typename Simd<T>::H*>(p), VD);
}
// G doubles rounded to T, stored at p.
template <typename T>
inline __attribute__((always_inline)) void store_d(T* p, VD v) {
  *reinterpret_cast<typename Simd<T>::H*>(p) = __builtin_convertvector(v, typename Simd<T>::H);
}
// GCC 12 lowers __builtin_convertvector(float x8 -> double x8) to a split /
// convert / merge sequence: use the one-instruction conversions where known.
#if defined(__AVX512F__)
template <>
inline __attribute__((always_inline)) VD load_d<float>(const float* p) {
  // maskz: the same instruction, without GCC 12's -Wuninitialized false positive
  return reinterpret_cast<VD>(_mm512_maskz_cvtps_pd(__mmask8(0xFF), _mm256_loadu_ps(p)));
}
template <>
inline __attribute__((always_inline)) void store_d<float>(float* p, VD v) {
  _mm256_storeu_ps(p, _mm512_maskz_cvtpd_ps(__mmask8(0xFF), reinterpret_cast<__m512d>(v)));
}
#elif defined(__AVX__)
template <>
inline __attribute__((always_inline)) VD load_d<float>(const float* p) {
  return reinterpret_cast<VD>(_mm256_cvtps_pd(_mm_loadu_ps(p)));
}
template <>
inline __attribute__((always_inline)) void store_d<float>(float* p, VD v) {
  _mm_storeu_ps(p, _mm256_cvtpd_ps(reinterpret_cast<__m256d>(v)));
}
#endif
// v rounded to T and widened back to double (a float value's round trip;
// the identity for double). For float no multiply before it can be contracted
// with an add after it.
template <typename T>
inline __attribute__((always_inline)) VD round_through(VD v) {
  if constexpr (std::is_same<T, double>::value) {
    return v;
  } else {
#if defined(__AVX512F__)
    // maskz: the same instructions, without GCC 12's -Wmaybe-uninitialized false positive
    return reinterpret_cast<VD>(
        _mm512_maskz_cvtps_pd(__mmask8(0xFF), _mm512_maskz_cvtpd_ps(__mmask8(0xFF), reinterpret_cast<__m512d>(v))));
#elif defined(__AVX__)
    return reinterpret_cast<VD>(_mm256_cvtps_pd(_mm256_cvtpd_ps(reinterpret_cast<__m256d>(v))));
#else
    T tmp[G];
    store_d(tmp, v);
    return load_d(tmp);
#endif
  }
}
// G lane integers at p, widened to int64.
template <typename T>
inline __attribute__((always_inline)) VI load_i(const LaneInt<T>* p) {
  return __builtin_convertvector(*reinterpret_cast<const typename Simd<T>::HI*>(p), VI);
}
inline VD splat_d(double v) { return VD{} + v; }
inline VI splat_i(std::int64_t v) { return VI{} + v; }

// Lane-wise: a is finite (no NaN, no +-inf); all-ones mask where true.
inline __attribute__((always_inline)) VI finite_d(VD a) {
  const double inf = std::numeric_limits<double>::infinity();
  return (a < inf) & (a > -inf);
}
// Lane-wise (a + b) / 2 in double; a/2 + b/2 where a + b overflows (T = double only).
inline __attribute__((always_inline)) VD mid_d(VD a, VD b) {
  const VD s = a + b;
  return finite_d(s) ? s * 0.5 : a * 0.5 + b * 0.5;
}

// ---- tiles -------------------------------------------------------------------
// Copies the wl <= W results of a tile to out (fixed-size copy when full).
template <std::size_t W, typename T>
inline void write_out(T* out, const T* res, std::size_t wl) {
  if (wl == W)
    std::memcpy(out, res, W * sizeof(T));
  else
    std::memcpy(out, res, wl * sizeof(T));
}

// Writes a sum kernel's tile, v[g] (g < W / G) rounded to T: the first wl
// coordinates at out, stored directly when the tile is full.
template <std::size_t W, typename T>
inline __attribute__((always_inline)) void store_tile(T* out, const VD* v, std::size_t wl) {
  if (wl == W) {
#pragma GCC unroll 16
    for (std::size_t g = 0; g < W / G; ++g) store_d(out + g * G, v[g]);
    return;
  }
  alignas(64) T res[W];
#pragma GCC unroll 16
  for (std::size_t g = 0; g < W / G; ++g) store_d(res + g * G, v[g]);
  write_out<W>(out, res, wl);
}

// acc[g] / count for the NG sum vectors of a tile (a mean of count rows); for
// a power-of-two count the product by its reciprocal, which is the same number
// (exact scaling) without a division.
template <std::size_t NG>
inline __attribute__((always_inline)) void divide_by_count(VD* acc, std::size_t count) {
  if ((count & (count - 1)) == 0) {
    const double inv = 1.0 / double(count);
#pragma GCC unroll 16
    for (std::size_t g = 0; g < NG; ++g) acc[g] *= inv;
  } else {
    const double c = double(count);
#pragma GCC unroll 16
    for (std::size_t g = 0; g < NG; ++g) acc[g] /= c;
  }
}

// The sum kernels' rows on a tile of W (reduce::TileRows): a full tile's rows
// are read in place; on the last, partial tile (wl < W) the rows' wl
// coordinates are first copied into tail (row i at tail + i * W, lanes >= wl
// zero), so that the row loop holds no copy (a memcpy call there made GCC
// keep the accumulators in memory: average, n = 20, d = 1e4, one thread,
// 19.7 -> 27 us). tail: tail_bytes<T, W>(nrows, d) of scratch.
template <typename T, std::size_t W>
reduce::TileRows<T> sum_tile(const T* const* rows, std::size_t nrows, std::size_t j0, std::size_t wl, T* tail) {
  if (wl == W) return reduce::TileRows<T>{rows, j0, nullptr, W};
  return reduce::copy_tile(rows, nrows, j0, wl, W, W, tail);
}
// The scratch a partial tile needs (none when W divides d).
template <typename T, std::size_t W>
std::size_t tail_bytes(std::size_t nrows, std::size_t d) {
  return d % W ? nrows * W * sizeof(T) : 0;
}

// 64-byte aligned per-thread scratch.
class Scratch {
 public:
  Scratch(std::size_t bytes_per_thread, int threads) {
    stride_ = (bytes_per_thread + 63) / 64 * 64;
    bytes_.resize(stride_ * std::size_t(threads) + 64);
  }
  void* get(int thread) { return reduce::to_line<unsigned char>(bytes_.data()) + stride_ * std::size_t(thread); }

 private:
  std::size_t stride_ = 0;
  std::vector<unsigned char> bytes_;
};

// Below this many input elements per thread, extra threads cost more than
// they bring (small d): fewer threads are used. Results do not depend on it.
constexpr std::size_t kMinElementsPerThread = std::size_t(1) << 15;

// Runs fn(j0, wl, scratch) on every tile [j0, j0+wl) of width <= W, in parallel
// (schedule(static)); scratch: `scratch_bytes` per thread, 64-byte aligned.
// n: rows (work estimate only).
template <std::size_t W, typename Fn>
void parallel_tiles(std::size_t n, std::size_t d, std::size_t scratch_bytes, Fn&& fn) {
  const std::size_t ntiles = (d + W - 1) / W;
  const std::size_t useful = (ntiles * W * n) / kMinElementsPerThread + 1;
  int threads = reduce::threads_for(n * d);
  if (std::size_t(threads) > useful) threads = int(useful);
  if (std::size_t(threads) > ntiles) threads = int(ntiles);
  if (threads < 1) threads = 1;
  Scratch scratch(scratch_bytes, threads);
  if (threads == 1) {  // no parallel region (small inputs; calls from inside one)
    void* s = scratch.get(0);
    for (std::size_t j0 = 0; j0 < d; j0 += W) fn(j0, std::min(W, d - j0), s);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    void* s = scratch.get(reduce::thread_num());
#pragma omp for schedule(static)
    for (std::int64_t t = 0; t < static_cast<std::int64_t>(ntiles); ++t) {
      const std::size_t j0 = std::size_t(t) * W;
      fn(j0, std::min(W, d - j0), s);
    }
  }
}

// How a tile is loaded.
enum class Load {
  kAbsent,  // non-finite -> +inf (sorts last, treated as absent); count finite values per lane
  kNanHigh  // NaN -> +inf, +-inf kept (trimmed mean); no count
};

// Copies coordinates [j0, j0+wl) of the n rows into buf (n x W, 64-byte
// aligned) with the mapping of `mode`; cnt[l] = finite values of lane l
// (kAbsent). Lanes >= wl are filled with 0 (their results are never written).
template <Load mode, typename T, std::size_t W>
inline void load_tile(const T* const* rows, std::size_t n, std::size_t j0, std::size_t wl, T* __restrict buf,
                      LaneInt<T>* __restrict cnt) {
  typedef typename Simd<T>::V V;
  typedef typename Simd<T>::VU VU;
  typedef typename Simd<T>::VM VM;
  typedef typename Simd<T>::VMA VMA;
  constexpr std::size_t L = kVecBytes / sizeof(T);
  constexpr std::size_t NV = W / L;
  const T inf = std::numeric_limits<T>::infinity();
  VM c[NV];
  for (std::size_t v = 0; v < NV; ++v) c[v] = VM{};
  for (std::size_t i = 0; i < n; ++i) {
    T* dst = buf + i * W;
    const T* src = rows[i] + j0;
    if (wl < W) {  // tail: pad into the tile row first, then map in place
      for (std::size_t l = 0; l < W; ++l) dst[l] = l < wl ? src[l] : T(0);
      src = dst;
    } else {
      reduce::prefetch_span_l2(reinterpret_cast<const char*>(src) + kPrefetchBytes, W * sizeof(T));
    }
    for (std::size_t v = 0; v < NV; ++v) {
      V x = *reinterpret_cast<const VU*>(src + v * L);
      if (mode == Load::kAbsent) {
        const VM fin = (x < inf) & (x > -inf);
        x = fin ? x : inf;
        c[v] -= fin;  // a true mask is -1
      } else {
        x = x == x ? x : inf;
      }
      *reinterpret_cast<V*>(dst + v * L) = x;
    }
  }
  if (mode == Load::kAbsent)
    for (std::size_t v = 0; v < NV; ++v) *reinterpret_cast<VMA*>(cnt + v * L) = c[v];
}

// N <= sortnet::kMaxStaticN rows, a full tile: the rows' values go from G
// straight into registers, one register column at a time, the compile-time
// network of `Kind` sorts them there, and only the wires [lo, hi) read
// afterwards are stored to the tile buffer (row p at buf + p * W). This
// is load_tile + TileSorter::sort without the buffer's round trip: load_tile
// stored every value and the sorter loaded and stored every wire again (two
// 64-byte stores per value, ~2 cycles each on the AMD EPYC host). The wires
// stored are those of load_tile + sort, so the read-outs that follow are
// unchanged (same bits). kAbsent: returns false, with nothing of use in buf,
// as soon as a column holds a non-finite value (the caller then takes
// load_tile's way, which counts each lane's finite values); here every value
// is finite and no lane needs a count. kNanHigh: NaN -> +inf, always true.
template <typename T>
using FusedSortFn = bool (*)(const T* const*, std::size_t, T*, std::size_t, std::size_t);
#if defined(PYAGG_STATIC_NETWORKS)
template <Load mode, int Kind, typename T, std::size_t W, std::size_t N, std::size_t... I>
inline __attribute__((always_inline)) bool fused_column(const T* const* rows, std::size_t j0, std::size_t v,
                                                        T* buf, std::size_t lo, std::size_t hi,
                                                        std::index_sequence<I...>) {
  typedef typename Simd<T>::V V;
  typedef typename Simd<T>::VU VU;
  typedef typename Simd<T>::VM VM;
  constexpr std::size_t L = kVecBytes / sizeof(T);
  const T inf = std::numeric_limits<T>::infinity();
  V w[N > 0 ? N : 1];
  VM bad = VM{};
  auto load = [&](std::size_t i) __attribute__((always_inline)) {
    const T* src = rows[i] + j0;
    if (v == 0) reduce::prefetch_span_l2(reinterpret_cast<const char*>(src) + kPrefetchBytes, W * sizeof(T));
    V x = *reinterpret_cast<const VU*>(src + v * L);
    if (mode == Load::kAbsent)
      bad |= ~((x < inf) & (x > -inf));
    else
      x = x == x ? x : inf;
    w[i] = x;
  };
  (load(I), ...);
  if (mode == Load::kAbsent) {
    std::uint64_t any[sizeof(VM) / 8];
    std::memcpy(any, &bad, sizeof any);
    std::uint64_t o = 0;
    for (std::size_t q = 0; q < sizeof(VM) / 8; ++q) o |= any[q];
    if (o) return false;
  }
  sortnet::fixed_apply<T, N, Kind>(w, std::make_index_sequence<sortnet::FixedNetOf<N, Kind>::value.size>{});
  auto store = [&](std::size_t p) __attribute__((always_inline)) {
    if (p >= lo && p < hi) *reinterpret_cast<V*>(buf + p * W + v * L) = w[p];
  };
  (store(I), ...);
  (void)load;
  (void)store;
  return true;
}
template <Load mode, int Kind, typename T, std::size_t W, std::size_t N>
bool fused_sort(const T* const* rows, std::size_t j0, T* buf, std::size_t lo, std::size_t hi) {
  constexpr std::size_t NV = W * sizeof(T) / kVecBytes;
  for (std::size_t v = 0; v < NV; ++v)
    if (!fused_column<mode, Kind, T, W, N>(rows, j0, v, buf, lo, hi, std::make_index_sequence<N>{})) return false;
  return true;
}
// Sanitizer builds (ASan: clang's -O1 build of this file took 9 min 50 s
// with every size, 3 min 51 s without the fused sorters) instantiate them
// for a few sizes only; the others fall back to load_tile + sort.
#if defined(__SANITIZE_ADDRESS__)
#define PYAGG_FUSED_FEW_SIZES 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PYAGG_FUSED_FEW_SIZES 1
#endif
#endif
template <Load mode, int Kind, typename T, std::size_t W, std::size_t N>
constexpr FusedSortFn<T> fused_entry() {
#if defined(PYAGG_FUSED_FEW_SIZES)
  if constexpr (N != 3 && N != 20 && N != 32)
    return nullptr;
  else
#endif
    return &fused_sort<mode, Kind, T, W, N>;
}
template <Load mode, int Kind, typename T, std::size_t W, std::size_t... N>
constexpr std::array<FusedSortFn<T>, sizeof...(N)> fused_sort_table(std::index_sequence<N...>) {
  return {{fused_entry<mode, Kind, T, W, N>()...}};
}
#endif
// The fused load + sort for n rows, or nullptr (n > kMaxStaticN; no static
// networks compiled in).
template <Load mode, int Kind, typename T, std::size_t W>
FusedSortFn<T> fused_sorter(std::size_t n) {
#if defined(PYAGG_STATIC_NETWORKS)
  static constexpr std::array<FusedSortFn<T>, sortnet::kMaxStaticN + 1> table =
      fused_sort_table<mode, Kind, T, W>(std::make_index_sequence<sortnet::kMaxStaticN + 1>{});
  return n >= 1 && n <= sortnet::kMaxStaticN ? table[n] : nullptr;
#else
  (void)n;
  return nullptr;
#endif
}
// The same, chosen at run time: the (mode, kind) pairs the rules use; else nullptr.
template <typename T, std::size_t W>
FusedSortFn<T> fused_for(Load mode, int kind, std::size_t n) {
  if (mode == Load::kNanHigh)
    return kind == sortnet::kSortAll ? fused_sorter<Load::kNanHigh, sortnet::kSortAll, T, W>(n) : nullptr;
  if (kind == sortnet::kMiddle) return fused_sorter<Load::kAbsent, sortnet::kMiddle, T, W>(n);
  if (kind == sortnet::kSortAll) return fused_sorter<Load::kAbsent, sortnet::kSortAll, T, W>(n);
  return nullptr;
}

// Sorts (or partially sorts, see sortnet::prune_network) the n x W tile:
// n <= sortnet::kMaxStaticN: the compile-time network of `kind` (registers);
// else the run-time network pruned to `want` if n <= kMaxNetworkN; else a
// per-lane std::sort (col: n elements). `kind` must deliver at least `want`.
template <typename T, std::size_t W>
struct TileSorter {
  std::vector<sortnet::Offsets> net;
  sortnet::FixedSortFn<T> fixed = nullptr;
  // n > 32: the network's first levels sort each whole block of 32 wires on
  // its own (Batcher's comparators with p < 32 never leave a 32-aligned
  // block); those blocks are sorted with the compile-time 32-wire network,
  // wires in registers (the same comparators in the same order), and only the
  // rest of the network is applied, pruned, in the L1 buffer. n = 100,
  // median: 3 x 191 comparators in registers, 325 in memory (was 898);
  // trimmed mean (f = 20): 358 in memory (was 931).
  sortnet::FixedSortFn<T> block_sort = nullptr;
  std::size_t nblocks = 0;
  bool use_net = true;
  std::size_t n = 0;
  // load_sort's way (fused_sort, n <= 32): the rows loaded with the
  // constructor's `mode` (load_tile's).
  FusedSortFn<T> fused = nullptr;

  TileSorter(std::size_t n_, const std::vector<unsigned char>& want, int kind, Load mode = Load::kAbsent)
      : n(n_) {
    switch (kind) {
      case sortnet::kMiddle: fixed = sortnet::fixed_sorter<T, W, sortnet::kMiddle>(n); break;
      case sortnet::kLowerHalf: fixed = sortnet::fixed_sorter<T, W, sortnet::kLowerHalf>(n); break;
      default: fixed = sortnet::fixed_sorter<T, W, sortnet::kSortAll>(n); break;
    }
    use_net = n <= kMaxNetworkN;
    if (fixed) fused = fused_for<T, W>(mode, kind, n);
    if (fixed || !use_net) return;
    const auto full = sortnet::batcher_network(n);
    if (!presorted_blocks(full, want)) net = sortnet::to_offsets(sortnet::prune_network(full, want), W);
  }

  // load_tile(mode) + sort in one (fused_sort: n <= 32, a full tile, wl ==
  // W): only the wires [lo, hi) reach buf, as load_tile + sort() leave them.
  // false (buf then holds nothing of use): n > 32, a partial tile, or
  // (kAbsent) a non-finite value: the caller takes load_tile and sort(),
  // which count each lane's finite values; true: (kAbsent) every value was
  // finite. n > 32: fusing each whole block's load into its sort the same
  // way was slower (median, n = 100, d = 1e6: 46-52 against 37-45 ms): the
  // 32 wires and their finiteness test spill registers there.
  bool load_sort(const T* const* rows, std::size_t j0, std::size_t wl, T* buf, std::size_t lo, std::size_t hi) const {
    return fused && wl == W && fused(rows, j0, buf, lo, hi);
  }

  // Sets block_sort, nblocks and net when the first levels of `full` are the
  // 32-wire network on every whole block. The blocks then run every one of
  // their comparators, pruned or not, and the rest is pruned on its own: the
  // exact wires and each bag's multiset are those of the whole network (a
  // pruned-out comparator only moves values nothing reads, or permutes two
  // values of one bag). Exact wires get the same values as the pruned whole
  // network; a bag's values may sit on other wires (the trimmed mean sums
  // them in wire order: a float64 sum may round differently).
  bool presorted_blocks(const std::vector<sortnet::Comparator>& full, const std::vector<unsigned char>& want) {
    constexpr std::size_t B = sortnet::kMaxStaticN;
    const sortnet::FixedSortFn<T> bs = sortnet::fixed_sorter<T, W, sortnet::kSortAll>(B);
    if (!bs || n <= B) return false;
    std::size_t split = 0;
    while (split < full.size() && full[split].a / B == full[split].b / B) ++split;
    const std::size_t nb = n / B;
    const auto blk = sortnet::batcher_network(B);
    std::vector<std::size_t> seen(nb, 0);
    std::vector<sortnet::Comparator> rest;  // the partial block's first levels, then the merges
    for (std::size_t c = 0; c < split; ++c) {
      const std::size_t b = full[c].a / B;
      if (b >= nb) {
        rest.push_back(full[c]);
        continue;
      }
      const std::size_t q = seen[b]++;
      if (q >= blk.size() || blk[q].a + b * B != full[c].a || blk[q].b + b * B != full[c].b) return false;
    }
    for (std::size_t b = 0; b < nb; ++b)
      if (seen[b] != blk.size()) return false;
    rest.insert(rest.end(), full.begin() + std::ptrdiff_t(split), full.end());
    net = sortnet::to_offsets(sortnet::prune_network(rest, want), W);
    block_sort = bs;
    nblocks = nb;
    return true;
  }

  void sort(T* buf, T* col) const {
    if (fixed) {
      fixed(buf);
      return;
    }
    if (use_net) {
      for (std::size_t b = 0; b < nblocks; ++b) block_sort(buf + b * sortnet::kMaxStaticN * W);
      sortnet::apply<T, W>(buf, net.data(), net.size());
      return;
    }
    for (std::size_t l = 0; l < W; ++l) {
      for (std::size_t i = 0; i < n; ++i) col[i] = buf[i * W + l];
      std::sort(col, col + n);
      for (std::size_t i = 0; i < n; ++i) buf[i * W + l] = col[i];
    }
  }
};

std::vector<unsigned char> want_range(std::size_t n, std::size_t lo, std::size_t hi, unsigned char w) {
  std::vector<unsigned char> v(n, sortnet::kDead);
  for (std::size_t i = lo; i < hi && i < n; ++i) v[i] = w;
  return v;
}

// Medians of the finite values of every lane of a tile sorted at least on
// wires 0..n/2 (the k = cnt finite values of a lane first), in double, as
// NG = W/G groups of G lanes: k odd: s[(k-1)/2]; k even: mid of s[k/2-1] and
// s[k/2]; k = 0: 0. Upper: the upper median s[k/2] whatever the parity. Groups are interleaved in the inner loop (independent
// dependency chains).
template <typename T, std::size_t W, bool Upper = false>
inline __attribute__((always_inline)) void median_tile(const T* buf, std::size_t n, const VI* k, VD* m) {
  constexpr std::size_t NG = W / G;
  VI plo[NG], phi[NG];
  VD a[NG], b[NG];
  for (std::size_t g = 0; g < NG; ++g) {
    plo[g] = (k[g] - 1) >> 1;  // k = 0: -1, never matches
    phi[g] = k[g] >> 1;
    a[g] = b[g] = VD{};
  }
  for (std::size_t p = 0; p <= n / 2 && p < n; ++p) {
    const VI pv = splat_i(std::int64_t(p));
    for (std::size_t g = 0; g < NG; ++g) {
      const VD r = load_d(buf + p * W + g * G);
      a[g] = plo[g] == pv ? r : a[g];
      b[g] = phi[g] == pv ? r : b[g];
    }
  }
  for (std::size_t g = 0; g < NG; ++g) {
    const VD md = Upper ? b[g] : (plo[g] == phi[g] ? a[g] : mid_d(a[g], b[g]));
    m[g] = k[g] == 0 ? VD{} : md;
  }
}

// Bytes of per-thread scratch for a sorting tile: buffer + per-lane sort column.
template <typename T, std::size_t W>
std::size_t sort_scratch_bytes(std::size_t n) {
  return (n * W + n) * sizeof(T) + 64;
}

}  // namespace

// ------------------------------------------- average after clipping/zeroing ---
// chain.cpp's fused clipping > average and zeroing > average: the average of
// the rows clipping or zeroing would write, with average's order and
// arithmetic (sum in double from +0.0 in row order, / n, rounded once).
// Row i adds T(double(x) * scale[i]) when scale[i] < 1 (clipping's written
// value: formed in a scratch tile, so the scaling is rounded to T and never
// contracted into the sum), nothing when keep[i] == 0 (the zero row adds +0.0,
// which leaves a sum that started at +0.0 unchanged: it is never -0.0), and
// x itself otherwise. scale / keep may be null (no scaling / every row kept).
namespace {
// average_scaled's tiles; Plain: scale and keep are null (average itself: the
// row loop without their tests is 11% faster in cache with AVX-512 and 25%
// with AVX2 on the AMD host, n = 20, d = 1e4, one thread). In cache the float
// row loop is bound by the widening to double (Zen 4: one vcvtps2pd zmm per
// two cycles): a float accumulation, as torch.mean's, is 1.8x faster there
// (C++ harness, n = 20, d = 1e4, one thread: 8.5 vs 15.2 us) but the spec
// asks for double sums. Tried and dropped: half the additions as multiply-adds
// by 1.0 on the FMA pipes (same bits, 3-5% faster: not worth the code), and
// widening by integer shifts and masks on the bit patterns (exact, with the
// 2^896 scale applied once per tile, but 20% slower than vcvtps2pd).
template <bool Plain, typename T>
void average_tiles(const T* const* rows, std::size_t n, std::size_t d, const double* scale,
                   const unsigned char* keep, T* out) {
  constexpr std::size_t W = kSumTileBytes / sizeof(double);
  constexpr std::size_t NG = W / G;
  const SumPrefetch<T> pf(n, d);
  // scratch: a scaled row (W values), then the partial tile's rows
  parallel_tiles<W>(n, d, W * sizeof(T) + tail_bytes<T, W>(n, d),
                    [=](std::size_t j0, std::size_t wl, void* scratch) {
    const auto tile = sum_tile<T, W>(rows, n, j0, wl, static_cast<T*>(scratch) + W);
    VD acc[NG];
#pragma GCC unroll 16
    for (std::size_t g = 0; g < NG; ++g) acc[g] = VD{};
    for (std::size_t i = 0; i < n; ++i) {
      if (!Plain && keep && !keep[i]) continue;
      const T* src = tile[i];
      pf(src, j0, W, d);
      if constexpr (!Plain) {
        const double s = scale ? scale[i] : 1.0;
        if (s < 1.0 && std::is_same<T, float>::value) {
          // float: T(double(x) * s) in registers (the rounding to float keeps
          // the product from being contracted into the sum); a partial
          // tile's lanes >= wl are TileRows' zeros
          const VD sv = VD{} + s;
#pragma GCC unroll 16
          for (std::size_t g = 0; g < NG; ++g) acc[g] += round_through<T>(load_d(src + g * G) * sv);
          continue;
        }
        if (s < 1.0) {  // double: the scaled row in the scratch
          T* pad = static_cast<T*>(scratch);
          for (std::size_t l = 0; l < W; ++l) pad[l] = static_cast<T>(static_cast<double>(src[l]) * s);
          src = pad;
        }
      }
#pragma GCC unroll 16
      for (std::size_t g = 0; g < NG; ++g) acc[g] += load_d(src + g * G);
    }
    divide_by_count<NG>(acc, n);
    store_tile<W>(out + j0, acc, wl);
  });
}
}  // namespace

template <typename T>
void average_scaled(const T* const* rows, std::size_t n, std::size_t d, const double* scale,
                    const unsigned char* keep, T* out) {
  if (!scale && !keep)
    average_tiles<true>(rows, n, d, scale, keep, out);
  else
    average_tiles<false>(rows, n, d, scale, keep, out);
}
// ------------------------------------------------ weighted sums of rows ---
// out = T(sum_t a[t] * x_t) (post = 0, den = 1: the geometric median's and
// centered clipping's combination), T(0.0 + post * sum_t a[t] * x_t)
// (post != 0: centered clipping from v = 0) or T(sum_t a[t] * x_t / den)
// (den != 1: next.cpp's combinations), the sum in double over the rows in the
// given order for every coordinate, from +0.0; each term a multiply-add where
// the target has FMA (as the scalar loops it replaces were compiled).
// Accumulators in registers over tiles of kSumTileBytes, like average.
template <typename T>
void weighted_sum(const T* const* rows, const double* a, std::size_t cnt, std::size_t d, double post, double den,
                  T* out) {
  constexpr std::size_t W = kSumTileBytes / sizeof(double);
  constexpr std::size_t NG = W / G;
  const SumPrefetch<T> pf(cnt, d);
  parallel_tiles<W>(cnt, d, tail_bytes<T, W>(cnt, d), [&](std::size_t j0, std::size_t wl, void* scratch) {
    const auto tile = sum_tile<T, W>(rows, cnt, j0, wl, static_cast<T*>(scratch));
    VD acc[NG];
#pragma GCC unroll 16
    for (std::size_t g = 0; g < NG; ++g) acc[g] = VD{};
    for (std::size_t t = 0; t < cnt; ++t) {
      const T* src = tile[t];
      pf(src, j0, W, d);
      const VD av = VD{} + a[t];
#pragma GCC unroll 16
      for (std::size_t g = 0; g < NG; ++g) acc[g] += av * load_d(src + g * G);
    }
    if (post != 0.0) {
      const VD pv = VD{} + post;
#pragma GCC unroll 16
      for (std::size_t g = 0; g < NG; ++g) acc[g] = VD{} + pv * acc[g];
    }
    if (den != 1.0) {
      const VD dv = VD{} + den;
#pragma GCC unroll 16
      for (std::size_t g = 0; g < NG; ++g) acc[g] /= dv;
    }
    store_tile<W>(out + j0, acc, wl);
  });
}
template void weighted_sum<float>(const float* const*, const double*, std::size_t, std::size_t, double, double,
                                  float*);
template void weighted_sum<double>(const double* const*, const double*, std::size_t, std::size_t, double, double,
                                   double*);

// ------------------------------------------------------------ bucket means ---
// Output row b = the mean of rows [b*s, min(n, (b+1)*s)): per coordinate
// 0.0 + the rows in order, in double, then divided by the bucket's size
// (divide_by_count), rounded to T. Per tile, every bucket in turn from registers, as
// average: all n rows of a tile are read at about the same time (n streams
// hinted ahead, whatever s), each bucket's sum never leaves the registers.
template <typename T>
void bucket_means(const T* const* rows, std::size_t n, std::size_t d, std::size_t s, T* out) {
  constexpr std::size_t W = kSumTileBytes / sizeof(double);
  constexpr std::size_t NG = W / G;
  const std::size_t nbk = (n + s - 1) / s;
  const SumPrefetch<T> pf(n, d);
  parallel_tiles<W>(n, d, tail_bytes<T, W>(n, d), [&](std::size_t j0, std::size_t wl, void* scratch) {
    const auto tile = sum_tile<T, W>(rows, n, j0, wl, static_cast<T*>(scratch));
    for (std::size_t b = 0; b < nbk; ++b) {
      const std::size_t r0 = b * s, r1 = std::min(n, r0 + s);
      VD acc[NG];
#pragma GCC unroll 16
      for (std::size_t g = 0; g < NG; ++g) acc[g] = VD{};
      for (std::size_t r = r0; r < r1; ++r) {
        const T* src = tile[r];
        pf(src, j0, W, d);
#pragma GCC unroll 16
        for (std::size_t g = 0; g < NG; ++g) acc[g] += load_d(src + g * G);
      }
      divide_by_count<NG>(acc, r1 - r0);
      store_tile<W>(out + b * d + j0, acc, wl);
    }
  });
}
template void bucket_means<float>(const float* const*, std::size_t, std::size_t, std::size_t, float*);
template void bucket_means<double>(const double* const*, std::size_t, std::size_t, std::size_t, double*);

// ---------------------------------------------------------------- average ---
// average_scaled with every row kept and unscaled.
template <typename T>
void average(const T* const* rows, std::size_t n, std::size_t d, T* out) {
  average_scaled<T>(rows, n, d, nullptr, nullptr, out);
}

template void average_scaled<float>(const float* const*, std::size_t, std::size_t, const double*,
                                    const unsigned char*, float*);
template void average_scaled<double>(const double* const*, std::size_t, std::size_t, const double*,
                                     const unsigned char*, double*);

// ------------------------------------------------------------ average-nan ---
template <typename T>
void average_nan(const T* const* rows, std::size_t n, std::size_t d, T* out) {
  constexpr std::size_t W = kNanTileBytes / sizeof(double);
  constexpr std::size_t NG = W / G;
  const SumPrefetch<T> pf(n, d);
  parallel_tiles<W>(n, d, tail_bytes<T, W>(n, d), [&](std::size_t j0, std::size_t wl, void* scratch) {
    const auto tile = sum_tile<T, W>(rows, n, j0, wl, static_cast<T*>(scratch));
    VD sum[NG], cnt[NG];
#pragma GCC unroll 16
    for (std::size_t g = 0; g < NG; ++g) sum[g] = cnt[g] = VD{};
    for (std::size_t i = 0; i < n; ++i) {
      const T* src = tile[i];
      pf(src, j0, W, d);
#pragma GCC unroll 16
      for (std::size_t g = 0; g < NG; ++g) {
        const VD x = load_d(src + g * G);
        const VI fin = finite_d(x);
        sum[g] += fin ? x : VD{};
        cnt[g] += fin ? splat_d(1.0) : VD{};
      }
    }
#pragma GCC unroll 16
    for (std::size_t g = 0; g < NG; ++g) sum[g] = cnt[g] > 0.0 ? sum[g] / cnt[g] : VD{};
    store_tile<W>(out + j0, sum, wl);
  });
}

// ----------------------------------------------------------------- median ---
template <typename T>
void median(const T* const* rows, std::size_t n, std::size_t d, T* out) {
  constexpr std::size_t W = tile_w<T>();
  // Every lane with n finite values: only the middle wires are needed.
  const TileSorter<T, W> mid_sorter(n, want_range(n, (n - 1) / 2, n / 2 + 1, sortnet::kExact), sortnet::kMiddle);
  // Some lane with fewer: the median position depends on the lane's count k.
  const TileSorter<T, W> low_sorter(n, want_range(n, 0, n / 2 + 1, sortnet::kExact), sortnet::kLowerHalf);
  parallel_tiles<W>(n, d, sort_scratch_bytes<T, W>(n), [&](std::size_t j0, std::size_t wl, void* scratch) {
    T* buf = static_cast<T*>(scratch);
    T* col = buf + n * W;
    alignas(64) LaneInt<T> cnt[W];
    alignas(64) T res[W];
    bool all = mid_sorter.load_sort(rows, j0, wl, buf, (n - 1) / 2, n / 2 + 1);
    if (!all) {
      load_tile<Load::kAbsent, T, W>(rows, n, j0, wl, buf, cnt);
      all = true;
      for (std::size_t l = 0; l < W; ++l) all &= cnt[l] == LaneInt<T>(n);
      if (all) mid_sorter.sort(buf, col);
    }
    if (all) {
      const T* a = buf + ((n - 1) / 2) * W;
      const T* b = buf + (n / 2) * W;
      if (n % 2 == 1)
        std::memcpy(res, a, sizeof res);
      else
        for (std::size_t g = 0; g < W; g += G) store_d(res + g, mid_d(load_d(a + g), load_d(b + g)));
    } else {
      low_sorter.sort(buf, col);
      VI k[W / G];
      VD m[W / G];
      for (std::size_t g = 0; g < W / G; ++g) k[g] = load_i<T>(cnt + g * G);
      median_tile<T, W>(buf, n, k, m);
      for (std::size_t g = 0; g < W / G; ++g) store_d(res + g * G, m[g]);
    }
    write_out<W>(out + j0, res, wl);
  });
}

// ----------------------------------------------------------- trimmed-mean ---
template <typename T>
void trimmed_mean(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, T* out) {
  constexpr std::size_t W = tile_w<T>();
  // Only the multiset of the kept wires f..n-f-1 matters (they are summed).
  const TileSorter<T, W> sorter(n, want_range(n, f, n - f, sortnet::kBag), sortnet::kSortAll, Load::kNanHigh);
  const double kept = double(n - 2 * f);
  parallel_tiles<W>(n, d, sort_scratch_bytes<T, W>(n), [&](std::size_t j0, std::size_t wl, void* scratch) {
    T* buf = static_cast<T*>(scratch);
    T* col = buf + n * W;
    alignas(64) T res[W];
    if (!sorter.load_sort(rows, j0, wl, buf, f, n - f)) {
      load_tile<Load::kNanHigh, T, W>(rows, n, j0, wl, buf, nullptr);
      sorter.sort(buf, col);
    }
    constexpr std::size_t NG = W / G;
    VD acc[NG];
    for (std::size_t g = 0; g < NG; ++g) acc[g] = VD{};
    for (std::size_t p = f; p < n - f; ++p)
      for (std::size_t g = 0; g < NG; ++g) acc[g] += load_d(buf + p * W + g * G);
    for (std::size_t g = 0; g < NG; ++g) store_d(res + g * G, acc[g] / kept);
    write_out<W>(out + j0, res, wl);
  });
}

// -------------------------------------------------------- averaged-median ---
namespace {
// Whether the averaged median takes TileSorter::load_sort. It stores every
// wire (the window may read any), so the fusion saves only load_tile's
// stores: with AVX-512 (32 registers) 0.93-1.02x its time at n = 20, d = 1e6
// and 1e7; with AVX2 (16) the wires spill and it was 1.05x.
constexpr bool kFuseFullSort = kVecBytes >= 64;
template <typename T, bool Upper>
void averaged_median_impl(const T* const* rows, std::size_t n, std::size_t d, std::size_t beta, T* out) {
  constexpr std::size_t W = tile_w<T>();
  // The window and the comparisons may read any wire: full sort.
  const TileSorter<T, W> sorter(n, want_range(n, 0, n, sortnet::kExact), sortnet::kSortAll);
  const VI vbeta = splat_i(std::int64_t(beta));
  parallel_tiles<W>(n, d, sort_scratch_bytes<T, W>(n), [&](std::size_t j0, std::size_t wl, void* scratch) {
    T* buf = static_cast<T*>(scratch);
    T* col = buf + n * W;
    alignas(64) LaneInt<T> cnt[W];
    alignas(64) T res[W];
    if (kFuseFullSort && sorter.load_sort(rows, j0, wl, buf, 0, n)) {
      for (std::size_t l = 0; l < W; ++l) cnt[l] = LaneInt<T>(n);
    } else {
      load_tile<Load::kAbsent, T, W>(rows, n, j0, wl, buf, cnt);
      sorter.sort(buf, col);
    }
    constexpr std::size_t NG = W / G;
    VI k[NG], b[NG], c[NG], e[NG];
    VD m[NG], acc[NG];
    bool all = true;  // every lane has n finite values: the median's wires are fixed
    for (std::size_t l = 0; l < W; ++l) all &= cnt[l] == LaneInt<T>(n);
    for (std::size_t g = 0; g < NG; ++g) k[g] = load_i<T>(cnt + g * G);
    if (all) {  // median_tile's values for k = n, without its scan of n/2 + 1 wires
      for (std::size_t g = 0; g < NG; ++g) {
        const VD hi = load_d(buf + (n / 2) * W + g * G);
        m[g] = (Upper || n % 2 == 1) ? hi : mid_d(load_d(buf + (n / 2 - 1) * W + g * G), hi);
      }
    } else {
      median_tile<T, W, Upper>(buf, n, k, m);
    }
    for (std::size_t g = 0; g < NG; ++g) {
      b[g] = k[g] < vbeta ? k[g] : vbeta;  // window size min(beta, k)
      c[g] = VI{};
      acc[g] = VD{};
    }
    // Window start c: how many windows [p, p+beta) must slide right.
    for (std::size_t p = 0; p + beta < n; ++p)
      for (std::size_t g = 0; g < NG; ++g) {
        const VD left = load_d(buf + p * W + g * G), right = load_d(buf + (p + beta) * W + g * G);
        c[g] -= (right - m[g]) < (m[g] - left);  // a true mask is -1
      }
    // Sum of the window [c, c+b), ascending. Wires [lo, hi) lie in the window
    // of every lane of the tile: no mask there.
    std::int64_t lo = 0, hi = std::int64_t(n);
    for (std::size_t g = 0; g < NG; ++g) {
      e[g] = c[g] + b[g];
      for (std::size_t l = 0; l < G; ++l) {
        lo = std::max<std::int64_t>(lo, c[g][l]);
        hi = std::min<std::int64_t>(hi, e[g][l]);
      }
    }
    for (std::int64_t p = 0; p < std::int64_t(n); ++p) {
      const VI pv = splat_i(p);
      if (p >= lo && p < hi) {
        for (std::size_t g = 0; g < NG; ++g) acc[g] += load_d(buf + p * W + g * G);
      } else {
        for (std::size_t g = 0; g < NG; ++g) {
          // c <= p < c + b as one unsigned compare of p - c with b
          const VD r = load_d(buf + p * W + g * G);
          acc[g] += (VUI)(pv - c[g]) < (VUI)b[g] ? r : VD{};
        }
      }
    }
    for (std::size_t g = 0; g < NG; ++g) {
      const VD mean = acc[g] / __builtin_convertvector(b[g], VD);
      store_d(res + g * G, k[g] == 0 ? VD{} : mean);
    }
    write_out<W>(out + j0, res, wl);
  });
}
}  // namespace

template <typename T>
void averaged_median(const T* const* rows, std::size_t n, std::size_t d, std::size_t beta, T* out) {
  averaged_median_impl<T, false>(rows, n, d, beta, out);
}

template <typename T>
void averaged_upper_median(const T* const* rows, std::size_t n, std::size_t d, std::size_t beta, T* out) {
  averaged_median_impl<T, true>(rows, n, d, beta, out);
}

template void average<float>(const float* const* rows, std::size_t n, std::size_t d, float* out);
template void average<double>(const double* const* rows, std::size_t n, std::size_t d, double* out);
template void average_nan<float>(const float* const* rows, std::size_t n, std::size_t d, float* out);
template void average_nan<double>(const double* const* rows, std::size_t n, std::size_t d, double* out);
template void median<float>(const float* const* rows, std::size_t n, std::size_t d, float* out);
template void median<double>(const double* const* rows, std::size_t n, std::size_t d, double* out);
template void trimmed_mean<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t f, float* out);
template void trimmed_mean<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t f,
                                   double* out);
template void averaged_median<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t beta,
                                     float* out);
template void averaged_median<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t beta,
                                      double* out);
template void averaged_upper_median<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t beta,
                                           float* out);
template void averaged_upper_median<double>(const double* const* rows, std::size_t n, std::size_t d,
                                            std::size_t beta, double* out);

}  // namespace cpu
}  // namespace pyagg
