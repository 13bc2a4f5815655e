// pyagg engine — device memory helpers used by front ends that move host data
// to a GPU (pyagg.aggregate(..., device="cuda")). Without CUDA compiled in, or
// without a usable device, every function returns a Status saying so.
#pragma once

#include <cstddef>

#include "pyagg/status.h"

namespace pyagg {

Status device_malloc(int device_id, std::size_t bytes, void** ptr);
Status device_free(int device_id, void* ptr);
Status copy_host_to_device(int device_id, void* dst, const void* src, std::size_t bytes);
Status copy_device_to_host(int device_id, void* dst, const void* src, std::size_t bytes);
// Waits for the engine's work on that device to finish.
Status device_synchronize(int device_id);

}  // namespace pyagg
