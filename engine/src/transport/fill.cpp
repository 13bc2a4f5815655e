// pyagg engine — LossyMPI fill policies: what a chunk that never arrived
// becomes. One implementation, used by the receiver and exported to Python.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "common/splitmix.h"
#include "pyagg/transport.h"

namespace pyagg {
namespace transport {

namespace {


template <typename T>
void fill_chunk(uint8_t* p, std::size_t ne, FillPolicy policy, uint64_t seed, uint64_t step, uint32_t rank,
                std::size_t c) {
  switch (policy) {
    case FillPolicy::kZero:
      std::memset(p, 0, ne * sizeof(T));
      return;
    case FillPolicy::kNan: {
      const T v = std::numeric_limits<T>::quiet_NaN();
      for (std::size_t k = 0; k < ne; ++k) std::memcpy(p + sizeof(T) * k, &v, sizeof(T));
      return;
    }
    case FillPolicy::kRandom: {
      // Standard normal values (Box-Muller), reproducible from (seed, step, rank, chunk).
      uint64_t s = seed ^ (step * 0x9E3779B97F4A7C15ull) ^ (uint64_t(rank) << 32) ^ uint64_t(c);
      splitmix64(&s);
      for (std::size_t k = 0; k < ne; k += 2) {
        const double u1 = 1.0 - uniform01(&s), u2 = uniform01(&s);
        const double rad = std::sqrt(-2.0 * std::log(u1));
        const double z[2] = {rad * std::cos(2 * M_PI * u2), rad * std::sin(2 * M_PI * u2)};
        for (std::size_t j = 0; j < 2 && k + j < ne; ++j) {
          const T v = static_cast<T>(z[j]);
          std::memcpy(p + sizeof(T) * (k + j), &v, sizeof(T));
        }
      }
      return;
    }
    case FillPolicy::kLast:
      return;
  }
}

}  // namespace

Status fill_chunks(void* row, const Geometry& g, DType dtype, FillPolicy policy, const uint8_t* received,
                   uint64_t seed, uint64_t step, uint32_t rank) {
  if (dtype != DType::kFloat32 && dtype != DType::kFloat64) {
    return Status::Invalid("fill_chunks: dtype must be float32 or float64, got code " + std::to_string(int(dtype)));
  }
  if (int(policy) < 0 || int(policy) > 3) {
    return Status::Invalid("fill_chunks: unknown fill policy code " + std::to_string(int(policy)));
  }
  const std::size_t es = dtype_size(dtype);
  // The geometry must be self-consistent (what make_geometry returns), so every
  // chunk lies inside the d * elem_size bytes of the row.
  if (g.d == 0 || g.elem_size != es || g.chunk_elems == 0 || g.chunk_bytes != g.chunk_elems * es ||
      g.d > SIZE_MAX / es || g.total_bytes != g.d * es ||
      g.chunk_count != (g.d + g.chunk_elems - 1) / g.chunk_elems) {
    return Status::Invalid("fill_chunks: inconsistent geometry (d=" + std::to_string(g.d) +
                           ", elem_size=" + std::to_string(g.elem_size) + ", chunk_elems=" +
                           std::to_string(g.chunk_elems) + ", chunk_count=" + std::to_string(g.chunk_count) +
                           ") for dtype " + dtype_name(dtype) + "; use make_geometry");
  }
  if (row == nullptr) return Status::Invalid("fill_chunks: row is null");
  if (policy == FillPolicy::kLast) return Status::Ok();
  uint8_t* base = static_cast<uint8_t*>(row);
  for (std::size_t c = 0; c < g.chunk_count; ++c) {
    if (received != nullptr) {
      const uint8_t byte = received[c >> 3];
      if (byte == 0xFF && (c & 7) == 0 && c + 8 <= g.chunk_count) {  // 8 received chunks at once
        c += 7;
        continue;
      }
      if (byte & (uint8_t(1) << (c & 7))) continue;
    }
    uint8_t* p = base + c * g.chunk_bytes;
    const std::size_t ne = g.chunk_len(c) / es;
    if (dtype == DType::kFloat32) {
      fill_chunk<float>(p, ne, policy, seed, step, rank, c);
    } else {
      fill_chunk<double>(p, ne, policy, seed, step, rank, c);
    }
  }
  return Status::Ok();
}

}  // namespace transport
}  // namespace pyagg
