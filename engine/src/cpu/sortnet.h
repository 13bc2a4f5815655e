// pyagg engine — CPU backend: sorting networks applied element-wise to tiles.
//
// Internal header (coordinate.cpp, tests/cpp/test_coordinate.cpp).
//
// A tile is n "row vectors" of W lanes each (buf[i*W + l]: value of row i at
// lane l, one lane per coordinate). A comparator (a, b), a < b, replaces rows
// a and b by their lane-wise min and max: W coordinates are sorted at once,
// with vector min/max and no branch, and no transposition of the data.
//
// Networks:
//   - batcher_network(n): Batcher's odd-even merge sort (Batcher 1968), built
//     for the next power of two P >= n; comparators touching a wire >= n are
//     dropped (equivalent to padding with +inf, which never moves since every
//     comparator puts the minimum on its lower wire). n=20: 103 comparators
//     (84 after pruning to the median wires, 90 for a trimmed mean with f=4).
//   - prune_network(net, want): removes the comparators that cannot influence
//     what the caller reads afterwards. `want[w]` says what is read on wire w
//     after the network:
//        kDead  : nothing;
//        kBag   : only the multiset of the values on all kBag wires (e.g. a
//                 sum, as in the trimmed mean);
//        kExact : the exact sorted value (an order statistic).
//     Backwards pass: a comparator whose two outputs are both dead, or both
//     bag-only, is removed (a comparator permutes its two values, so it leaves
//     the bag's multiset unchanged); a kept comparator makes both its inputs
//     exact. By the 0-1 principle this is checked exhaustively in the tests.
//
//   - FixedNetOf<N, Kind> (N <= kMaxStaticN): the same comparator lists built
//     at compile time (constexpr), applied by fixed_sort() with the wires in
//     registers; the tests check they equal the run-time lists.
//
// Values must be totally ordered by `<` (no NaN in the tile: callers map NaN to
// +inf before applying a network).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "common/sortnet_build.h"
#include "cpu/cpu_backend.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace pyagg {
namespace cpu {
namespace sortnet {

// The network construction is shared with the CUDA backend
// (common/sortnet_build.h); these names keep the CPU code's spelling.
using netbuild::batcher_network;
using netbuild::Comparator;
using netbuild::kBag;
using netbuild::kDead;
using netbuild::kExact;
using netbuild::prune_network;
using netbuild::Want;

// Comparators as element offsets into a tile of W lanes (a*W, b*W).
struct Offsets {
  std::uint32_t a, b;
};
inline std::vector<Offsets> to_offsets(const std::vector<Comparator>& net, std::size_t W) {
  std::vector<Offsets> o(net.size());
  for (std::size_t c = 0; c < net.size(); ++c)
    o[c] = {std::uint32_t(net[c].a * W), std::uint32_t(net[c].b * W)};
  return o;
}

// Bytes of one SIMD register for the element-wise comparators (cpu_backend.h).
using ::pyagg::cpu::kVecBytes;

// SIMD register types (GCC/Clang vector extensions): A, aligned to a full
// vector (tile buffers); U, aligned to the element only (caller's rows). Both
// may alias T. Loads and stores go through these types rather than memcpy:
// GCC's Haswell-era tuning splits a 32-byte memcpy into two 16-byte moves
// through the stack, a store-forwarding stall per comparator.
#if defined(__GNUC__)
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float A __attribute__((vector_size(kVecBytes), aligned(kVecBytes), may_alias));
  typedef float U __attribute__((vector_size(kVecBytes), aligned(alignof(float)), may_alias));
};
template <>
struct Vec<double> {
  typedef double A __attribute__((vector_size(kVecBytes), aligned(kVecBytes), may_alias));
  typedef double U __attribute__((vector_size(kVecBytes), aligned(alignof(double)), may_alias));
};
#endif

// vmin(y, x) = y < x ? y : x and vmax(x, y) = x > y ? x : y, lane-wise: the
// x86 min/max semantics, so each is one instruction. (The generic vector
// ternary costs a compare and two blends, and GCC takes minutes to optimise
// the long straight-line networks written with it: static networks are only
// compiled where the intrinsics exist, x86-64; elsewhere the run-time
// networks are used for every n, with the ternary.)
#if defined(__GNUC__) && defined(__SSE2__) && !defined(__CUDACC__)  // nvcc: run-time networks only
#define PYAGG_STATIC_NETWORKS 1
// (Casts between same-size GCC vector types reinterpret the bits.)
template <typename V>
inline __attribute__((always_inline)) V vmin(V y, V x) {
  constexpr bool f32 = sizeof(y[0]) == 4;
#if defined(__AVX512F__)
  // maskz forms: the same instruction, without GCC 12's -Wuninitialized false positive
  if constexpr (sizeof(V) == 64 && f32) return (V)_mm512_maskz_min_ps(0xFFFF, (__m512)y, (__m512)x);
  if constexpr (sizeof(V) == 64 && !f32) return (V)_mm512_maskz_min_pd(0xFF, (__m512d)y, (__m512d)x);
#endif
#if defined(__AVX__)
  if constexpr (sizeof(V) == 32 && f32) return (V)_mm256_min_ps((__m256)y, (__m256)x);
  if constexpr (sizeof(V) == 32 && !f32) return (V)_mm256_min_pd((__m256d)y, (__m256d)x);
#endif
  if constexpr (sizeof(V) == 16 && f32) return (V)_mm_min_ps((__m128)y, (__m128)x);
  if constexpr (sizeof(V) == 16 && !f32) return (V)_mm_min_pd((__m128d)y, (__m128d)x);
  return y < x ? y : x;
}
template <typename V>
inline __attribute__((always_inline)) V vmax(V x, V y) {
  constexpr bool f32 = sizeof(y[0]) == 4;
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64 && f32) return (V)_mm512_maskz_max_ps(0xFFFF, (__m512)x, (__m512)y);
  if constexpr (sizeof(V) == 64 && !f32) return (V)_mm512_maskz_max_pd(0xFF, (__m512d)x, (__m512d)y);
#endif
#if defined(__AVX__)
  if constexpr (sizeof(V) == 32 && f32) return (V)_mm256_max_ps((__m256)x, (__m256)y);
  if constexpr (sizeof(V) == 32 && !f32) return (V)_mm256_max_pd((__m256d)x, (__m256d)y);
#endif
  if constexpr (sizeof(V) == 16 && f32) return (V)_mm_max_ps((__m128)x, (__m128)y);
  if constexpr (sizeof(V) == 16 && !f32) return (V)_mm_max_pd((__m128d)x, (__m128d)y);
  return y < x ? x : y;
}
#endif

// Apply comparators (as offsets) to a tile of W lanes: lane-wise min/max.
// Written with vector extensions (no branch): a plain loop is not reliably
// vectorised here (the two rows may alias as far as the compiler knows). On
// x86-64 each register takes one min and one max (vmin/vmax, the ternaries'
// exact semantics); GCC wrote the ternaries as a compare and two blends, and
// the third vector op cost ~15-25% of this loop at n = 100 (AMD EPYC host, the
// median's 325 comparators on an L1 tile, timed alone). The loop is bound by
// its two stores per register (a 64-byte store takes ~2 cycles there; the
// in-register networks have none). buf must be aligned to kVecBytes and
// W * sizeof(T) a multiple of kVecBytes. Equal values are not swapped.
template <typename T, std::size_t W>
inline void apply(T* __restrict buf, const Offsets* net, std::size_t nc) {
#if defined(__GNUC__)
  static_assert((W * sizeof(T)) % kVecBytes == 0, "tile row must be a whole number of vectors");
  typedef typename Vec<T>::A V;
  constexpr std::size_t NV = W * sizeof(T) / kVecBytes;
  for (std::size_t c = 0; c < nc; ++c) {
    V* pa = reinterpret_cast<V*>(buf + net[c].a);
    V* pb = reinterpret_cast<V*>(buf + net[c].b);
    V x[NV], y[NV];  // both rows loaded before any store (pa and pb may alias as far as GCC knows)
    for (std::size_t v = 0; v < NV; ++v) {
      x[v] = pa[v];
      y[v] = pb[v];
    }
    for (std::size_t v = 0; v < NV; ++v) {
#if defined(PYAGG_STATIC_NETWORKS)
      pa[v] = vmin(y[v], x[v]);
      pb[v] = vmax(x[v], y[v]);
#else
      pa[v] = y[v] < x[v] ? y[v] : x[v];
      pb[v] = y[v] < x[v] ? x[v] : y[v];
#endif
    }
  }
#else
  for (std::size_t c = 0; c < nc; ++c) {
    T* pa = buf + net[c].a;
    T* pb = buf + net[c].b;
    for (std::size_t l = 0; l < W; ++l) {
      const T x = pa[l], y = pb[l];
      pa[l] = y < x ? y : x;
      pb[l] = y < x ? x : y;
    }
  }
#endif
}

// ---- compile-time networks, applied in registers --------------------------------
// For n <= kMaxStaticN the same networks (Batcher + pruning, identical
// comparator lists) are built at compile time and applied with every wire of
// one tile column held in a SIMD register: no load/store per comparator
// (those bound the run-time version: 2 stores per comparator and vector).
constexpr std::size_t kMaxStaticN = netbuild::kStaticSortN;
constexpr std::size_t kMaxStaticComparators = 256;  // Batcher, n = 32: 191
enum StaticKind : int {
  kSortAll = 0,    // every wire exact
  kMiddle = 1,     // wires (n-1)/2 and n/2 exact (median, all values present)
  kLowerHalf = 2,  // wires 0..n/2 exact (median of the finite values)
};

template <std::size_t N>
struct FixedNet {
  Comparator c[kMaxStaticComparators];
  std::size_t size;
};

template <std::size_t N, int Kind>
constexpr FixedNet<N> make_fixed_net() {
  static_assert(N <= kMaxStaticN, "static networks are for small n");
  Comparator full[kMaxStaticComparators] = {};
  std::size_t nf = 0;
  netbuild::for_each_batcher_comparator(N, [&full, &nf](std::size_t a, std::size_t b) {
    full[nf++] = Comparator{std::uint32_t(a), std::uint32_t(b)};
  });
  unsigned char want[kMaxStaticN + 1] = {};
  for (std::size_t w = 0; w < N; ++w)
    want[w] = (Kind == kSortAll || (Kind == kMiddle && w >= (N - 1) / 2 && w <= N / 2) ||
               (Kind == kLowerHalf && w <= N / 2))
                  ? kExact
                  : kDead;
  bool keep[kMaxStaticComparators] = {};
  for (std::size_t c = nf; c-- > 0;) {
    const unsigned char wa = want[full[c].a], wb = want[full[c].b];
    if ((wa == kDead && wb == kDead) || (wa == kBag && wb == kBag)) continue;
    keep[c] = true;
    want[full[c].a] = kExact;
    want[full[c].b] = kExact;
  }
  FixedNet<N> out{};
  out.size = 0;
  for (std::size_t c = 0; c < nf; ++c)
    if (keep[c]) out.c[out.size++] = full[c];
  return out;
}

template <std::size_t N, int Kind>
struct FixedNetOf {
  static constexpr FixedNet<N> value = make_fixed_net<N, Kind>();
};

#if defined(PYAGG_STATIC_NETWORKS)
template <typename T, std::size_t N, int Kind, std::size_t... I>
inline __attribute__((always_inline)) void fixed_apply(typename Vec<T>::A* w, std::index_sequence<I...>) {
  typedef typename Vec<T>::A V;
  constexpr const FixedNet<N>& net = FixedNetOf<N, Kind>::value;
  auto cx = [](V& a, V& b) {
    const V x = a, y = b;
    a = vmin(y, x);
    b = vmax(x, y);
  };
  (cx(w[net.c[I].a], w[net.c[I].b]), ...);
  (void)cx;
  (void)w;  // empty networks (n <= 1)
}
template <typename T, std::size_t W, std::size_t N, std::size_t... I>
inline __attribute__((always_inline)) void fixed_load(const typename Vec<T>::A* b, typename Vec<T>::A* w,
                                                      std::size_t v, std::index_sequence<I...>) {
  constexpr std::size_t NV = W * sizeof(T) / kVecBytes;
  ((w[I] = b[I * NV + v]), ...);
  (void)b;
  (void)w;
}
template <typename T, std::size_t W, std::size_t N, std::size_t... I>
inline __attribute__((always_inline)) void fixed_store(typename Vec<T>::A* b, const typename Vec<T>::A* w,
                                                       std::size_t v, std::index_sequence<I...>) {
  constexpr std::size_t NV = W * sizeof(T) / kVecBytes;
  ((b[I * NV + v] = w[I]), ...);
  (void)b;
  (void)w;
}

// Applies FixedNetOf<N, Kind> to a tile of N rows of W lanes (aligned like
// apply()), one column of registers at a time.
template <typename T, std::size_t W, std::size_t N, int Kind>
void fixed_sort(T* buf) {
  typedef typename Vec<T>::A V;
  constexpr std::size_t NV = W * sizeof(T) / kVecBytes;
  V* b = reinterpret_cast<V*>(buf);
  for (std::size_t v = 0; v < NV; ++v) {
    V w[N > 0 ? N : 1];
    fixed_load<T, W, N>(b, w, v, std::make_index_sequence<N>{});
    fixed_apply<T, N, Kind>(w, std::make_index_sequence<FixedNetOf<N, Kind>::value.size>{});
    fixed_store<T, W, N>(b, w, v, std::make_index_sequence<N>{});
  }
}

template <typename T, std::size_t W, int Kind, std::size_t... N>
constexpr std::array<void (*)(T*), sizeof...(N)> fixed_sort_table(std::index_sequence<N...>) {
  return {{&fixed_sort<T, W, N, Kind>...}};
}
#endif

template <typename T>
using FixedSortFn = void (*)(T*);
// The compile-time sorter for n wires (n <= kMaxStaticN), or nullptr (also
// where static networks are not compiled in).
template <typename T, std::size_t W, int Kind>
FixedSortFn<T> fixed_sorter(std::size_t n) {
#if defined(PYAGG_STATIC_NETWORKS)
  static constexpr std::array<FixedSortFn<T>, kMaxStaticN + 1> table =
      fixed_sort_table<T, W, Kind>(std::make_index_sequence<kMaxStaticN + 1>{});
  return n <= kMaxStaticN ? table[n] : nullptr;
#else
  (void)n;
  return nullptr;
#endif
}

}  // namespace sortnet
}  // namespace cpu
}  // namespace pyagg
