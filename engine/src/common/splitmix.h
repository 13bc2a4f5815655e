// pyagg engine — the one splitmix64 stream (Steele, Lea & Flood, 2014) used
// wherever the engine draws reproducible pseudo-random numbers: bucketing's
// shuffle (both backends), the rules_next streams, the transport's random
// fill and its test-only loss injection. engine/src/common: shared by the CPU
// and CUDA backends (plain host C++).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace pyagg {

// Advances *state and returns the next 64-bit value.
inline std::uint64_t splitmix64(std::uint64_t* state) {
  std::uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A double uniform in [0, 1) from the top 53 bits of the next value.
inline double uniform01(std::uint64_t* state) { return double(splitmix64(state) >> 11) * 0x1.0p-53; }

// A splitmix64 stream as an object: SplitMix64 rng{seed}.
struct SplitMix64 {
  std::uint64_t state;
  std::uint64_t next() { return splitmix64(&state); }
  double uniform() { return uniform01(&state); }
};

// Bucketing's shuffle (shared/spec/rules.md): Fisher-Yates on 0..n-1 driven by
// splitmix64(seed), for i = n-1 down to 1: j = next() % (i+1), swap(perm[i],
// perm[j]).
inline std::vector<std::size_t> shuffled_indices(std::size_t n, std::uint64_t seed) {
  std::vector<std::size_t> perm(n);
  for (std::size_t i = 0; i < n; ++i) perm[i] = i;
  SplitMix64 rng{seed};
  for (std::size_t i = n; i-- > 1;) {
    const std::size_t j = static_cast<std::size_t>(rng.next() % std::uint64_t(i + 1));
    std::swap(perm[i], perm[j]);
  }
  return perm;
}

}  // namespace pyagg
