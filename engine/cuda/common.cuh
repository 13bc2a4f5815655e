// pyagg engine — CUDA backend: internal helpers shared by the .cu files.
//
// Only engine/cuda/*.cu include this (nvcc), or the CPU emulator build
// (-DPYAGG_CUDA_EMULATE, g++). Contents: error handling (every CUDA call is
// checked and becomes a Status::Device naming the call and cudaGetErrorString),
// kernel launch helper, device guard (selects the caller's device and restores
// the previous one), per-device cached workspace, device math helpers whose
// rounding is explicit (no silent contraction where the CPU backend does not
// contract), and the interfaces between the backend's .cu files.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>  // before emu.cuh (its __noinline__ macro); pyagg/rules.h needs it
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#ifdef PYAGG_CUDA_EMULATE
#include "emu.cuh"
#define PYAGG_DYN_SMEM(type, name) type* name = reinterpret_cast<type*>(::emu::smem_base())
#else
#include <cuda_pipeline.h>
#include <cuda_runtime.h>
#define PYAGG_DYN_SMEM(type, name)                               \
  extern __shared__ __align__(16) unsigned char pyagg_smem_raw[]; \
  type* name = reinterpret_cast<type*>(pyagg_smem_raw)
#endif

#include "pyagg/rules.h"
#include "pyagg/status.h"
#include "pyagg/types.h"

namespace pyagg {
namespace cuda {

// ---- errors -----------------------------------------------------------------
inline Status cuda_error(const char* what, cudaError_t e) {
  (void)cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  std::string m = std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e) + " (code " +
                  std::to_string(int(e)) + ")";
  if (e == cudaErrorMemoryAllocation) return Status::OutOfMemory(m);
  return Status::Device(m);
}

#define PYAGG_CUDA_CHECK(expr)                                      \
  do {                                                              \
    cudaError_t _e = (expr);                                        \
    if (_e != cudaSuccess) return ::pyagg::cuda::cuda_error(#expr, _e); \
  } while (0)

// Launches kernel<<<grid, block, smem, stream>>>(args...) and checks the launch.
template <typename... KArgs, typename... Args>
inline Status launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, std::size_t smem,
                     cudaStream_t stream, Args&&... args) {
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return cuda_error((std::string(name) + " (set shared memory size)").c_str(), e);
  }
#ifdef PYAGG_CUDA_EMULATE
  (void)stream;
  cudaError_t e = emu::launch(grid, block, smem, [&]() { kernel(KArgs(args)...); });
#else
  kernel<<<grid, block, smem, stream>>>(KArgs(args)...);
  cudaError_t e = cudaGetLastError();
#endif
  if (e != cudaSuccess) return cuda_error(name, e);
  return Status::Ok();
}

// ---- device selection -----------------------------------------------------------
// Number of usable devices, or a Status saying why there is none.
Status device_count(int* count);

// Makes `device_id` current for the scope; restores the caller's device after.
class DeviceGuard {
 public:
  DeviceGuard() = default;
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  ~DeviceGuard() {
    if (restore_) (void)cudaSetDevice(prev_);
  }
  Status set(int device_id);

 private:
  int prev_ = 0;
  bool restore_ = false;
};

// Checks that p is memory the device can read (device or managed memory of
// device_id); `what` names the pointer in the message.
Status check_device_pointer(const void* p, int device_id, const char* what);

// ---- workspace ------------------------------------------------------------------
// One cached scratch buffer per device, grown on demand, guarded by a mutex:
// concurrent aggregate() calls on the same device are serialised (they would
// compete for the same SMs anyway). Never freed (process lifetime).
class Workspace {
 public:
  std::mutex mu;
  // Ensures at least `bytes` bytes; the previous content is lost.
  Status reserve(std::size_t bytes);
  void* base() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
  std::size_t size_ = 0;
};
Workspace& workspace(int device_id);

// Carves aligned sub-buffers out of the workspace: add() every buffer, then
// commit() once; the pointers are valid until the workspace is next reserved.
class Arena {
 public:
  template <typename T>
  void add(T** p, std::size_t count) {
    items_.push_back({reinterpret_cast<void**>(p), count * sizeof(T)});
  }
  Status commit(Workspace& ws) {
    std::size_t total = 0;
    for (auto& it : items_) total += (it.bytes + 255) / 256 * 256;
    PYAGG_RETURN_IF_ERROR(ws.reserve(total));
    char* b = static_cast<char*>(ws.base());
    for (auto& it : items_) {
      *it.p = it.bytes ? b : nullptr;
      b += (it.bytes + 255) / 256 * 256;
    }
    return Status::Ok();
  }

 private:
  struct Item {
    void** p;
    std::size_t bytes;
  };
  std::vector<Item> items_;
};

// ---- device facts -----------------------------------------------------------------
struct DeviceInfo {
  int sms = 1;
  int smem_optin = 48 * 1024;
};
Status device_info(int device_id, DeviceInfo* info);

inline unsigned ceil_div(std::size_t a, std::size_t b) { return unsigned((a + b - 1) / b); }

// ---- device helpers ---------------------------------------------------------------
template <typename T>
__host__ __device__ __forceinline__ T pos_inf() {
  return std::numeric_limits<T>::infinity();
}

// Same test as the CPU backend: |v| < inf (false for NaN and +-inf).
template <typename T>
__host__ __device__ __forceinline__ bool finite_val(T v) {
  return (v < T(0) ? -v : v) < pos_inf<T>();
}

// Explicit rounding, so that the compiler neither contracts nor reorders where
// the CPU backend's arithmetic is mirrored exactly.
__host__ __device__ __forceinline__ double fma_d(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
// Fused multiply-add in T (float or double), explicitly rounded once.
__device__ __forceinline__ float fma_t(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_t(double a, double b, double c) { return __fma_rn(a, b, c); }
__host__ __device__ __forceinline__ double add_d(double a, double b) {
#if defined(__CUDA_ARCH__) || defined(PYAGG_CUDA_EMULATE)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
__host__ __device__ __forceinline__ double mul_d(double a, double b) {
#if defined(__CUDA_ARCH__) || defined(PYAGG_CUDA_EMULATE)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// The CPU's median midpoint: (a + b) / 2 in double; a/2 + b/2 on overflow.
__host__ __device__ __forceinline__ double midpoint(double a, double b) {
  const double s = add_d(a, b);
  const double as = s < 0 ? -s : s;
  return as < pos_inf<double>() ? mul_d(s, 0.5) : add_d(mul_d(a, 0.5), mul_d(b, 0.5));
}

// ---- interfaces between the backend's .cu files ------------------------------------
// All launchers enqueue on `stream` and return without synchronising.

// Distance matrix: D (n*n doubles, device) = squared L2 distances of the n rows
// of x (n*d row-major, device); +inf for pairs with a non-finite row (whose
// diagonal is +inf too), 0 on the diagonal of finite rows. Scratch from `ws`
// is NOT used: the caller passes buffers sized by distance_scratch().
struct DistancePlan {
  std::size_t n = 0, d = 0;
  int tk = 0;          // coordinates per shared-memory chunk
  int kg = 0;          // threads per pair tile
  int tiles_per_block = 0;
  int groups = 0;      // grid.y
  int slabs = 0;       // grid.x
  int threads = 0;     // block size
  std::size_t smem = 0;
  std::size_t dacc_off = 0;
  bool row_major = false;  // shared-memory layout (see distance.cu)
  std::size_t partial_doubles = 0;  // slabs * npairs
  int flush_every = 1;     // chunks per float window (float input)
  // Rigorous relative error bound of every finite D_ij computed with this
  // plan: rel_window for float input summed in float windows, rel_double for
  // double accumulation (double input, or float input with force_double).
  double rel_window = 0.0, rel_double = 0.0;
};
template <typename T>
Status plan_distance(std::size_t n, std::size_t d, const DeviceInfo& dev, DistancePlan* plan);
// part: plan.partial_doubles doubles; bad: n ints; D: n*n doubles.
// force_double: accumulate float input in double (fallback when a float
// partial overflowed for a pair of finite rows).
template <typename T>
Status run_distance(const DistancePlan& plan, const T* x, double* part, int* bad, double* D, bool force_double,
                    cudaStream_t stream);

// Coordinate-wise order-statistics rules over nw "wires" per coordinate. A wire
// is a row of x (wire w = row rows[w], or row w when rows == nullptr) or, when
// set_off != nullptr, the mean of rows set_idx[set_off[w] .. set_off[w+1]) in
// the CPU's mean_rows arithmetic (double, index order, rounded to T).
// kAveragedUpperMedian: the averaged median around the UPPER median (element
// k/2 of the k sorted finite values): bulyan-multikrum's coordinate phase.
enum class CoordOp : int { kMedian = 0, kTrimmedMean = 1, kAveragedMedian = 2, kAveragedUpperMedian = 3 };
struct WireSource {
  const int* rows = nullptr;     // device, nw entries, or nullptr
  const int* set_off = nullptr;  // device, nw+1 entries, or nullptr
  const int* set_idx = nullptr;  // device
};
// param: f for the trimmed mean, beta for the averaged median.
// scratch: coord_scratch_bytes(nw, d, sizeof(T)) bytes of device memory.
std::size_t coord_scratch_bytes(std::size_t nw, std::size_t d, std::size_t elem);
template <typename T>
Status run_coordinate(CoordOp op, const T* x, std::size_t d, std::size_t nw, const WireSource& src,
                      std::size_t param, T* out, void* scratch, const DeviceInfo& dev, cudaStream_t stream);

// average (nan_mode false) / average-nan (true).
template <typename T>
Status run_average(const T* x, std::size_t n, std::size_t d, bool nan_mode, T* out, cudaStream_t stream);

// out[r] (r < nsets) = mean of rows set_idx[set_off[r] .. set_off[r+1]) of x,
// per coordinate in double in set order, divided by the count, rounded to T.
// from_zero: the sum starts at 0.0 (bucketing) instead of the first value
// (mean_rows). out_row (device, nsets entries, optional): set r is written to
// output row out_row[r] instead of r.
template <typename T>
Status run_gather_mean(const T* x, std::size_t d, std::size_t nsets, const int* set_off, const int* set_idx,
                       bool from_zero, T* out, std::size_t out_stride, cudaStream_t stream,
                       const int* out_row = nullptr);

// Per-row blocked sums of squares, the CPU's reduce.h contract: for each row i
// with active[i] (all rows when active == nullptr) and each reduce block b,
// part[b*n + i] = fold of 16 interleaved lane sums of ((double)x - center)^2
// (center == nullptr: of (double)x^2); fin[b*n+i] = block of row i finite
// (when fin != nullptr). Inactive rows get 0.
template <typename T>
Status run_row_blocks(const T* x, std::size_t n, std::size_t d, const double* center,
                      const unsigned char* active, double* part, unsigned char* fin, cudaStream_t stream);
// out[q] = sum_{b < nb} part[b*stride + q] in block order (q < count);
// fin_out[q] = AND of fin[b*stride + q] when fin != nullptr.
Status run_combine(const double* part, const unsigned char* fin, std::size_t nb, std::size_t stride,
                   std::size_t count, double* out, unsigned char* fin_out, cudaStream_t stream);

std::size_t reduce_blocks(std::size_t d);  // ceil(d / cpu::kReduceBlock)

// Iterative rules (iterative.cu). The geometric median's direct iteration
// starts from the coordinate-wise median (mean_rows == nullptr), or from the
// mean of the rows *mean_rows (the mean start's fallback, backend.cu),
// computed in double on the device and kept in double, as the CPU's
// geometric_median_direct gets it: rounding that start to T first (as this
// did before) changed float32 results beyond the test's 1e-5, because with an
// even number of rows in 1-D every point between the two middle values is a
// fixed point of Weiszfeld's iteration, so where it stops depends on the
// trajectory (test_cuda byz-big, d = 1, n = 100 / 150: 4e-4 / 5e-3).
template <typename T>
Status run_geometric_median(const RuleConfig& r, const T* x, std::size_t n, std::size_t d, T* out,
                            const DeviceInfo& dev, Workspace& ws, cudaStream_t stream,
                            const std::vector<std::size_t>* mean_rows = nullptr);
template <typename T>
Status run_centered_clipping(const RuleConfig& r, const T* x, std::size_t n, std::size_t d, const T* state,
                             T* out, Workspace& ws, cudaStream_t stream);
template <typename T>
Status run_clipping(const PreConfig& c, const T* x, std::size_t n, std::size_t d, T* out, Workspace& ws,
                    cudaStream_t stream);

// out[i*d + j] = scale[i] < 1 ? (T)((double)x * scale[i]) : x (scale on device).
template <typename T>
Status run_scale_rows(const T* x, std::size_t n, std::size_t d, const double* scale, T* out, cudaStream_t stream);

// dnc, clipped-clustering, smea, caf, zeroing (next.cu).
// l1[b*n + i], li[b*n + i]: the L1 norm / the max |x| of row i on reduce block b.
template <typename T>
Status run_row_abs(const T* x, std::size_t n, std::size_t d, double* l1, double* li, cudaStream_t stream);
// buf[i*b + k] = x[i*d + cols[k]] (device arrays).
template <typename T>
Status run_gather_cols(const T* x, std::size_t n, std::size_t d, const long long* cols, std::size_t b, T* buf,
                       cudaStream_t stream);
// out[k] = T((sum_t a[t] * x[idx[t]*d + k]) / den); nan: NaN; cnt == 0: 0.
template <typename T>
Status run_combine_rows(const T* x, std::size_t d, const int* idx, const double* a, std::size_t cnt, double den,
                        bool nan, T* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace pyagg
