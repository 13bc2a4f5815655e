// Test helpers shared by the transport tests: a deterministic per-rank key and
// the best MAC this build offers.
#pragma once

#include <cstdint>
#include <vector>

#include "pyagg/transport.h"

namespace pyagg {
namespace transport {
namespace testing {

inline std::vector<uint8_t> key_of(int seed) {
  std::vector<uint8_t> k(kKeySize);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = uint8_t(seed * 31 + i * 7 + 1);
  return k;
}

inline MacAlgo best() {
  MacAlgo m = MacAlgo::kNone;
  return parse_mac("auto", &m).ok() ? m : MacAlgo::kNone;
}

}  // namespace testing
}  // namespace transport
}  // namespace pyagg
