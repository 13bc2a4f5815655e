// pyagg engine — CUDA backend: the sorting networks of the CPU backend, as
// plain host C++ (no CUDA keyword: tests/cpp/test_cuda.cpp includes it too).
//
// A copy of the network construction of engine/src/cpu/sortnet.h, kept here so
// that no .cu file includes that header (it holds GCC vector-extension code
// that nvcc's front end rejects). test_cuda checks, with or without a GPU,
// that these functions and constants still equal sortnet.h's; if they drift,
// it fails and says so (the GPU trimmed mean would then stop being
// bit-identical to the CPU's).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pyagg {
namespace cuda {
namespace net {

struct Comparator {
  std::uint32_t a, b;  // wires, a < b: after it, wire a holds the min, b the max
};

enum Want : unsigned char { kDead = 0, kBag = 1, kExact = 2 };

// The CPU sorts n <= kCpuStaticN values completely with compile-time networks
// (sortnet::kMaxStaticN), and applies run-time pruned networks above, up to
// kCpuMaxNetworkN (coordinate.cpp's kMaxNetworkN); std::sort beyond.
constexpr std::size_t kCpuStaticN = 32;
constexpr std::size_t kCpuMaxNetworkN = 4096;

// sortnet::batcher_network: Batcher's odd-even merge sort for the next power
// of two P >= n, comparators touching a wire >= n dropped.
inline std::vector<Comparator> batcher_network(std::size_t n) {
  std::vector<Comparator> net;
  std::size_t P = 1;
  while (P < n) P <<= 1;
  for (std::size_t p = 1; p < P; p <<= 1)
    for (std::size_t k = p; k >= 1; k >>= 1)
      for (std::size_t j = k % p; j + k < P; j += 2 * k)
        for (std::size_t i = 0; i < k && i + j + k < P; ++i)
          if ((i + j) / (2 * p) == (i + j + k) / (2 * p)) {
            const std::size_t a = i + j, b = i + j + k;
            if (b < n) net.push_back({std::uint32_t(a), std::uint32_t(b)});
          }
  return net;
}

// sortnet::prune_network: the comparators needed to deliver `want`.
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

}  // namespace net
}  // namespace cuda
}  // namespace pyagg
