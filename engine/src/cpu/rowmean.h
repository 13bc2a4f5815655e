// pyagg engine — CPU backend: row kernels shared by several files: the mean of
// a set of rows over a chunk of coordinates, clipping's scaling (internal header; distance.cpp: multi-krum, mda, nnm,
// bulyan-multikrum; chain.cpp: fused pre-aggregator + rule chains).
#pragma once

#include <cstddef>
#include <vector>

namespace pyagg {
namespace cpu {

// Row means. For 32 coordinates at a time, the sum over the selected rows is
// held in registers (a[32], vectorised by the compiler): per row and
// coordinate one load, one conversion, one add. Same order as the definition:
// per coordinate, rows in the order of `sel`, in double, then / cnt, rounded
// to T once. out[c] for c in [0, len) is the mean of rows[sel[s]][c0 + c].
//
// ZeroStart: the sum starts at 0.0 and adds every row (bucketing's
// definition: 0.0 + x is x except for x = -0.0, which becomes +0.0); without
// it the sum starts at the first row's value (nnm, multi-krum, mda).
template <typename T, bool ZeroStart = false>
inline void mean_chunk(const T* const* rows, const std::size_t* sel, std::size_t cnt, std::size_t c0,
                       std::size_t len, T* out) {
  constexpr std::size_t kStep = 32;
  const double dc = double(cnt);
  // For a power-of-two count the product by the reciprocal is the same number
  // as the quotient (exact scaling) and ~10x cheaper than a vector division.
  const bool pow2 = (cnt & (cnt - 1)) == 0;
  const double inv = 1.0 / dc;
  std::size_t c = 0;
  for (; c + kStep <= len; c += kStep) {
    double a[kStep];
    const T* r0 = rows[sel[0]] + c0 + c;
#pragma GCC unroll 32
    for (std::size_t l = 0; l < kStep; ++l) a[l] = ZeroStart ? 0.0 + double(r0[l]) : double(r0[l]);
    for (std::size_t s = 1; s < cnt; ++s) {
      const T* r = rows[sel[s]] + c0 + c;
#pragma GCC unroll 32
      for (std::size_t l = 0; l < kStep; ++l) a[l] += double(r[l]);
    }
    if (pow2) {
#pragma GCC unroll 32
      for (std::size_t l = 0; l < kStep; ++l) out[c + l] = T(a[l] * inv);
    } else {
#pragma GCC unroll 32
      for (std::size_t l = 0; l < kStep; ++l) out[c + l] = T(a[l] / dc);
    }
  }
  for (; c < len; ++c) {
    double a = ZeroStart ? 0.0 + double(rows[sel[0]][c0 + c]) : double(rows[sel[0]][c0 + c]);
    for (std::size_t s = 1; s < cnt; ++s) a += double(rows[sel[s]][c0 + c]);
    out[c] = T(pow2 ? a * inv : a / dc);
  }
}

// o = (T)((double)x * s), element-wise (o may equal x: in-place rescaling):
// clipping's arithmetic (preagg.cpp, chain.cpp).
template <typename T>
inline void scale_block(const T* x, T* o, std::size_t len, double s) {
  for (std::size_t j = 0; j < len; ++j) o[j] = static_cast<T>(static_cast<double>(x[j]) * s);
}

// Per-row clipping scales (preagg.cpp): scale[i] < 1 -> row i becomes
// scale_block(x_i, scale[i]); otherwise it is copied. Same norms and decisions
// as clipping(); writes nothing else.
template <typename T>
void clipping_scales(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, double tau, double* scale);

// The average of the rows clipping (scale) or zeroing (keep) would write,
// bit for bit as average() of that output (coordinate.cpp; chain.cpp's fused
// clipping/zeroing > average). scale / keep may be null.
template <typename T>
void average_scaled(const T* const* rows, std::size_t n, std::size_t d, const double* scale,
                    const unsigned char* keep, T* out);

// out = T(sum_t a[t] x_t) (post = 0) or T(0.0 + post * sum_t a[t] x_t), the
// sum in double in row order (coordinate.cpp; the geometric median's and
// centered clipping's combination pass).
template <typename T>
void weighted_sum(const T* const* rows, const double* a, std::size_t cnt, std::size_t d, double post, T* out);

// The zeroing pre-aggregator's decisions (next.cpp): keep[i] = 1 -> row i is
// copied, 0 -> it becomes a zero row. Same norms and decisions as zeroing_pre().
template <typename T>
std::vector<unsigned char> zeroing_keep_rows(const T* const* rows, std::size_t n, std::size_t d, double tau,
                                             int norm_order);

}  // namespace cpu
}  // namespace pyagg
