// pyagg engine — sizes both backends must agree on (engine/src/common: the one
// directory the CPU and CUDA backends both include; neither includes the
// other's internals).
#pragma once

#include <cstddef>

namespace pyagg {

// Coordinates per deterministic reduction block: every norm, dot product and
// distance is summed per block of kReduceBlock coordinates (the cut depends on
// d only, never on the thread or CUDA block count) and the block partials are
// combined in block order. The CUDA kernels use the same cut, so that their
// per-block partials line up with the CPU's.
constexpr std::size_t kReduceBlock = 4096;

// The CPU's distance pass (cpu/distance.cpp): n <= kGramMinN rows use the
// exact difference form with float partial sums for float input (~1e-7
// relative), n > kGramMinN the double Gram form with the exact fallback (~1e-11
// relative or better). The selection rules on float input take a float Gram
// form instead (<= 6.2e-5 relative; for n > kGramMinN, and most n below it:
// see distance.cpp). The CUDA geometric median (coefficient space, whose
// quadratic forms cancel and amplify D's rounding) accumulates its distances
// with the same precision class as the CPU for the same n.
constexpr std::size_t kGramMinN = 32;

}  // namespace pyagg
