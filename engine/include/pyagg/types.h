// pyagg engine — element types, devices, and the read-only view of n gradients.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pyagg {

enum class DType : int { kFloat32 = 0, kFloat64 = 1 };
enum class Device : int { kCpu = 0, kCuda = 1 };

inline std::size_t dtype_size(DType t) { return t == DType::kFloat32 ? 4 : 8; }
inline const char* dtype_name(DType t) { return t == DType::kFloat32 ? "float32" : "float64"; }
inline const char* device_name(Device d) { return d == Device::kCpu ? "cpu" : "cuda"; }

// n gradients of d coordinates each, all of one dtype, all on one device.
//
// Either `data` points at an n*d row-major block (rows == nullptr), or `rows`
// points at n row pointers of d elements each (data == nullptr): a list of
// separately allocated gradients is aggregated without stacking it.
// CUDA backends accept the contiguous form only (on the device).
struct GradView {
  const void* data = nullptr;
  const void* const* rows = nullptr;
  std::size_t n = 0;
  std::size_t d = 0;
  DType dtype = DType::kFloat32;
  Device device = Device::kCpu;
  int device_id = 0;  // CUDA ordinal when device == kCuda

  const void* row(std::size_t i) const {
    return rows ? rows[i]
                : static_cast<const char*>(data) + i * d * dtype_size(dtype);
  }
};

}  // namespace pyagg
