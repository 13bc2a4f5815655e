// pyagg engine — construction of the sorting networks, shared by the CPU and
// CUDA backends (plain host C++: no vector extension, no CUDA keyword, so both
// the CPU translation units and nvcc include it).
//
//   - batcher_network(n): Batcher's odd-even merge sort (Batcher 1968), built
//     for the next power of two P >= n; comparators touching a wire >= n are
//     dropped (equivalent to padding with +inf, which never moves since every
//     comparator puts the minimum on its lower wire).
//   - prune_network(net, want): removes the comparators that cannot influence
//     what the caller reads afterwards; want[w] says what is read on wire w:
//        kDead  : nothing;
//        kBag   : only the multiset of the values on all kBag wires (a sum);
//        kExact : the exact sorted value (an order statistic).
//     Backwards pass: a comparator whose two outputs are both dead, or both
//     bag-only, is removed; a kept comparator makes both its inputs exact.
//
// Both backends apply these lists (the CPU element-wise on tiles, cpu/sortnet.h;
// the GPU with a compile-time enumeration checked against them at run time,
// cuda/sortnet.cuh), so the order in which a trimmed mean sums its kept values
// is the same on both.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pyagg {
namespace netbuild {

struct Comparator {
  std::uint32_t a, b;  // wires, a < b: after it, wire a holds the min, b the max
};

enum Want : unsigned char { kDead = 0, kBag = 1, kExact = 2 };

// n <= kStaticSortN values: the CPU sorts completely with compile-time
// networks (all wires); kStaticSortN < n <= kMaxNetworkN: run-time networks
// pruned to what the rule reads; above: a per-coordinate std::sort (CPU) /
// heap sort (GPU).
constexpr std::size_t kStaticSortN = 32;
constexpr std::size_t kMaxNetworkN = 4096;

// Batcher's odd-even merge sort network on P = the next power of two >= n
// wires, in its order, restricted to the comparators whose wires are both
// < n: calls f(a, b) for each (a < b). constexpr, so the compile-time
// networks (cpu/sortnet.h, cuda/sortnet.cuh) enumerate it too.
template <typename F>
constexpr void for_each_batcher_comparator(std::size_t n, F&& f) {
  std::size_t P = 1;
  while (P < n) P <<= 1;
  for (std::size_t p = 1; p < P; p <<= 1)
    for (std::size_t k = p; k >= 1; k >>= 1)
      for (std::size_t j = k % p; j + k < P; j += 2 * k)
        for (std::size_t i = 0; i < k && i + j + k < P; ++i)
          if ((i + j) / (2 * p) == (i + j + k) / (2 * p) && i + j + k < n) f(i + j, i + j + k);
}

// Batcher's odd-even merge sort network for n wires (n >= 0).
inline std::vector<Comparator> batcher_network(std::size_t n) {
  std::vector<Comparator> net;
  for_each_batcher_comparator(n, [&net](std::size_t a, std::size_t b) {
    net.push_back({std::uint32_t(a), std::uint32_t(b)});
  });
  return net;
}

// The sub-network needed to deliver `want` (one entry per wire); see above.
inline std::vector<Comparator> prune_network(const std::vector<Comparator>& net, std::vector<unsigned char> want) {
  std::vector<char> keep(net.size(), 0);
  for (std::size_t c = net.size(); c-- > 0;) {
    const unsigned char wa = want[net[c].a], wb = want[net[c].b];
    if ((wa == kDead && wb == kDead) || (wa == kBag && wb == kBag)) continue;
    keep[c] = 1;
    want[net[c].a] = kExact;
    want[net[c].b] = kExact;
  }
  std::vector<Comparator> out;
  for (std::size_t c = 0; c < net.size(); ++c)
    if (keep[c]) out.push_back(net[c]);
  return out;
}

}  // namespace netbuild
}  // namespace pyagg
