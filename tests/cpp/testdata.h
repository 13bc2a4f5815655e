// Test data shared by the engine's native tests: NaN/Inf constants and n rows
// of d values, each row its own allocation (so kernels are exercised with row
// pointers, not one contiguous block).
#pragma once

#include <cstddef>
#include <limits>
#include <vector>

namespace testdata {

const double NaN = std::numeric_limits<double>::quiet_NaN();
const double Inf = std::numeric_limits<double>::infinity();

template <typename T>
struct Rows {
  std::vector<std::vector<T>> data;
  std::vector<const T*> ptr;
  Rows(std::size_t n, std::size_t d) : data(n, std::vector<T>(d)), ptr(n) {
    for (std::size_t i = 0; i < n; ++i) ptr[i] = data[i].data();
  }
  // From a flat row-major list of n*d values.
  Rows(std::size_t n, std::size_t d, const std::vector<double>& flat) : Rows(n, d) {
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < d; ++j) data[i][j] = static_cast<T>(flat[i * d + j]);
  }
  std::size_t n() const { return data.size(); }
  std::size_t d() const { return data.empty() ? 0 : data[0].size(); }
  const T* const* p() const { return ptr.data(); }
};

}  // namespace testdata
