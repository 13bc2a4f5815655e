// pyagg engine — the one splitmix64 stream (Steele, Lea & Flood, 2014) used
// wherever the engine draws reproducible pseudo-random numbers: bucketing's
// shuffle, the transport's random fill and its test-only loss injection.
#pragma once

#include <cstdint>

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

}  // namespace pyagg
