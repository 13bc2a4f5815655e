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

// Test and benchmark hook: D (host memory, n*n doubles, row-major) = the
// squared distances of the n rows of g (CUDA, contiguous), as computed for the
// distance-based rules (+inf for pairs with a non-finite row, its diagonal
// too; 0 on the diagonal of finite rows).
Status pairwise_sqdist(const GradView& g, double* D);

}  // namespace cuda
}  // namespace pyagg
