// pyagg engine — CUDA backend: plain C++ interface (only engine/cuda/*.cu see nvcc).
//
// Same contract as the CPU backend: inputs validated and parameters resolved
// by the dispatch point (engine/src/rules.cpp). Data (grads, out, state) is
// on the GPU `g.device_id`; the GradView is contiguous (rows == nullptr).
#pragma once

#include <cstddef>

#include "pyagg/rules.h"
#include "pyagg/status.h"
#include "pyagg/types.h"

namespace pyagg {
namespace cuda {

Status aggregate(const RuleConfig& resolved, const GradView& g, void* out, const void* state);
Status preaggregate(const PreConfig& cfg, const GradView& g, void* out);
Status device_count(int* count);

}  // namespace cuda
}  // namespace pyagg
