// pyagg engine — CUDA backend: devices, memory helpers (pyagg/device.h), the
// per-device workspace, pointer checks.
//
// Without a usable GPU (no driver: cudaErrorInsufficientDriver; no device:
// cudaErrorNoDevice; ...) every function returns Status::Device("no CUDA
// device: <reason>") and nothing crashes: the CUDA runtime is only asked for
// the device count first, and nothing else is called when that fails.
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common.cuh"
#include "cuda_backend.h"
#include "pyagg/device.h"

namespace pyagg {
namespace cuda {

Status device_count(int* count) {
  *count = 0;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::Device(std::string("no CUDA device: ") + cudaGetErrorString(e) + " (cudaGetDeviceCount code " +
                          std::to_string(int(e)) + ")");
  }
  if (n <= 0) return Status::Device("no CUDA device: cudaGetDeviceCount reports 0 devices");
  *count = n;
  return Status::Ok();
}

Status DeviceGuard::set(int device_id) {
  int n = 0;
  PYAGG_RETURN_IF_ERROR(device_count(&n));
  if (device_id < 0 || device_id >= n)
    return Status::Invalid("CUDA device " + std::to_string(device_id) + " does not exist (" + std::to_string(n) +
                           " device" + (n == 1 ? "" : "s") + ": 0.." + std::to_string(n - 1) + ")");
  PYAGG_CUDA_CHECK(cudaGetDevice(&prev_));
  if (prev_ != device_id) {
    PYAGG_CUDA_CHECK(cudaSetDevice(device_id));
    restore_ = true;
  }
  return Status::Ok();
}

Status check_device_pointer(const void* p, int device_id, const char* what) {
  if (!p) return Status::Invalid(std::string(what) + " is null");
  cudaPointerAttributes a;
  cudaError_t e = cudaPointerGetAttributes(&a, p);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::Invalid(std::string(what) + " is not a CUDA pointer (" + cudaGetErrorString(e) + ")");
  }
  if (a.type == cudaMemoryTypeManaged) return Status::Ok();
  if (a.type != cudaMemoryTypeDevice)
    return Status::Invalid(std::string(what) +
                           " is host memory, not CUDA device memory (device=\"cuda\" needs device pointers; "
                           "copy the data with pyagg::copy_host_to_device or use device=\"cpu\")");
  if (a.device != device_id)
    return Status::Invalid(std::string(what) + " lives on CUDA device " + std::to_string(a.device) +
                           ", but device " + std::to_string(device_id) + " was requested");
  return Status::Ok();
}

Status Workspace::reserve(std::size_t bytes) {
  if (bytes <= size_) return Status::Ok();
  if (ptr_) {
    PYAGG_CUDA_CHECK(cudaDeviceSynchronize());  // pending work may still use it
    PYAGG_CUDA_CHECK(cudaFree(ptr_));
    ptr_ = nullptr;
    size_ = 0;
  }
  // Grow geometrically (a little) to avoid re-allocating for slightly larger calls.
  std::size_t want = bytes + bytes / 8;
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, want);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    want = bytes;
    e = cudaMalloc(&p, want);
  }
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::OutOfMemory("CUDA backend: cannot allocate " + std::to_string(bytes) +
                               " bytes of device scratch memory (" + cudaGetErrorString(e) + ")");
  }
  ptr_ = p;
  size_ = want;
  return Status::Ok();
}

namespace {
std::mutex& table_mutex() {
  static std::mutex m;
  return m;
}
}  // namespace

Workspace& workspace(int device_id) {
  // Leaked on purpose: freeing device memory from a static destructor can run
  // after the CUDA runtime was torn down.
  static std::vector<Workspace*>* table = new std::vector<Workspace*>();
  std::lock_guard<std::mutex> lock(table_mutex());
  if (std::size_t(device_id) >= table->size()) table->resize(std::size_t(device_id) + 1, nullptr);
  Workspace*& w = (*table)[std::size_t(device_id)];
  if (!w) w = new Workspace();
  return *w;
}

Status device_info(int device_id, DeviceInfo* info) {
  static std::mutex m;
  static std::vector<DeviceInfo>* cache = new std::vector<DeviceInfo>();
  static std::vector<char>* have = new std::vector<char>();
  std::lock_guard<std::mutex> lock(m);
  if (std::size_t(device_id) < have->size() && (*have)[std::size_t(device_id)]) {
    *info = (*cache)[std::size_t(device_id)];
    return Status::Ok();
  }
  DeviceInfo di;
  PYAGG_CUDA_CHECK(cudaDeviceGetAttribute(&di.sms, cudaDevAttrMultiProcessorCount, device_id));
  PYAGG_CUDA_CHECK(cudaDeviceGetAttribute(&di.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_id));
  if (di.sms < 1) di.sms = 1;
  if (di.smem_optin < 48 * 1024) di.smem_optin = 48 * 1024;
  if (std::size_t(device_id) >= have->size()) {
    have->resize(std::size_t(device_id) + 1, 0);
    cache->resize(std::size_t(device_id) + 1);
  }
  (*cache)[std::size_t(device_id)] = di;
  (*have)[std::size_t(device_id)] = 1;
  *info = di;
  return Status::Ok();
}

}  // namespace cuda

// ---- pyagg/device.h ------------------------------------------------------------
Status device_malloc(int device_id, std::size_t bytes, void** ptr) {
  if (!ptr) return Status::Invalid("device_malloc: null output pointer");
  *ptr = nullptr;
  cuda::DeviceGuard guard;
  PYAGG_RETURN_IF_ERROR(guard.set(device_id));
  if (bytes == 0) return Status::Ok();
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::OutOfMemory("device_malloc: cannot allocate " + std::to_string(bytes) + " bytes on CUDA device " +
                               std::to_string(device_id) + " (" + cudaGetErrorString(e) + ")");
  }
  *ptr = p;
  return Status::Ok();
}

Status device_free(int device_id, void* ptr) {
  if (!ptr) return Status::Ok();
  cuda::DeviceGuard guard;
  PYAGG_RETURN_IF_ERROR(guard.set(device_id));
  PYAGG_CUDA_CHECK(cudaFree(ptr));
  return Status::Ok();
}

Status copy_host_to_device(int device_id, void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return Status::Ok();
  if (!dst || !src) return Status::Invalid("copy_host_to_device: null pointer");
  cuda::DeviceGuard guard;
  PYAGG_RETURN_IF_ERROR(guard.set(device_id));
  PYAGG_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
  return Status::Ok();
}

Status copy_device_to_host(int device_id, void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return Status::Ok();
  if (!dst || !src) return Status::Invalid("copy_device_to_host: null pointer");
  cuda::DeviceGuard guard;
  PYAGG_RETURN_IF_ERROR(guard.set(device_id));
  PYAGG_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
  return Status::Ok();
}

Status device_synchronize(int device_id) {
  cuda::DeviceGuard guard;
  PYAGG_RETURN_IF_ERROR(guard.set(device_id));
  PYAGG_CUDA_CHECK(cudaDeviceSynchronize());
  return Status::Ok();
}

}  // namespace pyagg
