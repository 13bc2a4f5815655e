// pyagg engine — CPU backend: pre-aggregators (composable in front of any rule).
//
//   bucketing  (Karimireddy, He, Jaggi, "Byzantine-robust learning on
//              heterogeneous datasets via bucketing", ICLR 2022): shuffle the n
//              rows, average them in buckets of s. With f Byzantine rows the
//              ceil(n/s) bucket means hold at most f Byzantine ones; the rule
//              that follows must tolerate f among ceil(n/s) (e.g. s <= n/(2f)
//              keeps a majority of honest buckets).
//   clipping   static norm clipping (tau > 0), or adaptive robust clipping,
//              ARC (Allouah, Guerraoui, Gupta, Pinot, Rizk, "Boosting robustness
//              by clipping gradients in distributed learning", 2024): clips
//              the k = floor(2f(n-f)/n) largest rows to the (k+1)-th largest
//              norm; preserves the robustness of the rule that follows
//              (requires n > f).
//
// EXACT SEMANTICS. "Non-finite row" = a row holding a NaN or +-inf.
// bucketing(s, seed):
//   splitmix64 stream: uint64 state = seed; next(): state += 0x9E3779B97F4A7C15;
//   z = state; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
//   z = (z ^ (z >> 27)) * 0x94D049BB133111EB; return z ^ (z >> 31).
//   perm = [0..n-1]; for i = n-1 down to 1: j = next() % (i+1); swap(perm[i], perm[j]).
//   Output row b (b = 0..ceil(n/s)-1) = mean of rows perm[b*s .. min(n,(b+1)*s)-1]
//   (the last bucket may be smaller): summed in double in that order, divided
//   by the bucket's size, rounded to T. NaN/inf propagate.
// clipping(f, tau):
//   Norms: ||x_i|| = sqrt of a deterministic blocked sum of squares (reduce.h).
//   tau > 0: each finite row x -> x * min(1, tau/||x||); non-finite rows are
//   copied unchanged.
//   tau == 0 (ARC): k = floor(2*f*(n-f)/n) in integer arithmetic; rows ordered
//   by norm descending (non-finite rows have norm +inf; ties: lower index
//   first); if k == 0 or the (k+1)-th largest norm C is not finite, every row is
//   copied; else every finite row with norm > C becomes x * (C/||x||), all
//   others are copied.
//   Scaling: out = (T)((double)x * scale) with scale = tau/||x|| (resp.
//   C/||x||) computed in double; a row with scale >= 1 is copied bit for bit.
//   (A finite float64 row whose squared norm overflows a double, |x| > ~1e154,
//   has norm +inf: static clipping turns it into zeros, ARC ranks it first.)
//
// IMPLEMENTATION. bucketing: the permutation on the caller's thread, then
// bucket_means (rowmean.h; coordinate.cpp, with the other sum kernels: per
// tile of coordinates, every bucket's sum in registers). clipping: see
// clipping() below.
// Determinism: norms are reduce.h blocked reductions; everything else is
// element-wise.
//
// No exception inside OpenMP regions: all scratch is allocated before them.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "common/splitmix.h"
#include "cpu/cpu_backend.h"
#include "cpu/reduce.h"
#include "cpu/rowmean.h"

namespace pyagg {
namespace cpu {
// ---------------------------------------------------------------- bucketing ---
template <typename T>
void bucketing(const T* const* rows, std::size_t n, std::size_t d, std::size_t s, std::uint64_t seed, T* out) {
  const std::vector<std::size_t> perm = shuffled_indices(n, seed);
  std::vector<const T*> prow(n);
  for (std::size_t i = 0; i < n; ++i) prow[i] = rows[perm[i]];
  bucket_means(prow.data(), n, d, s, out);
}

// ----------------------------------------------------------------- clipping ---
// ARC: k = floor(2f(n-f)/n); C = the (k+1)-th largest norm (non-finite rows
// count as +inf; ties: lower index first). Returns the rows to clip (finite,
// norm > C) and sets scale[i] = C / norm[i] for them.
static std::vector<std::size_t> arc_clipped(const double* norm, const unsigned char* finite, std::size_t n, std::size_t f,
                                     double* scale) {
  std::vector<std::size_t> clip;
  const std::size_t k = (2 * f * (n - f)) / n;
  if (k == 0) return clip;
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return norm[a] > norm[b]; });
  const double C = norm[order[k]];
  if (!std::isfinite(C)) return clip;
  for (std::size_t i = 0; i < n; ++i)
    if (finite[i] && norm[i] > C) {
      clip.push_back(i);
      scale[i] = C / norm[i];
    }
  return clip;
}

// Per row: squared-norm partials over the fixed blocks, combined in block
// order; static: then out row = scaled (or copied) x while x is still in cache
// (one read from memory, one write); ARC: the row is copied to out while its
// partials are computed (one read, one write), and once every norm is known
// the (at most k) clipped rows are rescaled in place.
// Parallelism: whole rows per thread when there are enough rows (no barrier
// at all: robust when the machine is oversubscribed), else the blocks of each
// row in turn. Same arithmetic, same bits, either way.
template <typename T>
void clipping(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, double tau, T* out) {
  const std::size_t nb = reduce::num_blocks(d);
  const int threads = reduce::threads_for(n * d);
  std::vector<double> part(n * nb), norm(n), scale(n, 1.0);
  std::vector<unsigned char> fpart(n * nb), finite(n);
  double* pp = part.data();
  unsigned char* fp = fpart.data();
  double* np_ = norm.data();
  double* sp = scale.data();
  unsigned char* fin = finite.data();
  const bool adaptive = !(tau > 0.0);
  const double inf = std::numeric_limits<double>::infinity();

  // Block b of row i: partial, finiteness, and (ARC) the copy.
  auto first = [&](std::size_t i, std::size_t b) {
    const std::size_t lo = reduce::block_begin(b), len = reduce::block_len(b, d);
    bool ok = true;
    pp[i * nb + b] = reduce::block_sumsq_finite(rows[i] + lo, len, &ok);
    fp[i * nb + b] = ok ? 1 : 0;
    if (adaptive) std::memcpy(out + i * d + lo, rows[i] + lo, len * sizeof(T));
  };
  // Row i's norm and scale from its partials (same result in every thread).
  auto finish = [&](std::size_t i, double* nrm_out, unsigned char* ok_out) {
    unsigned char ok = 1;
    for (std::size_t b = 0; b < nb; ++b) ok &= fp[i * nb + b];
    *ok_out = ok;
    *nrm_out = ok ? std::sqrt(reduce::combine_blocks(pp + i * nb, nb)) : inf;
    return (ok && !adaptive) ? tau / *nrm_out : 1.0;  // norm 0 -> +inf -> copied
  };
  // Block b of row i, static clipping: write out from x.
  auto second = [&](std::size_t i, std::size_t b, double s) {
    const std::size_t lo = reduce::block_begin(b), len = reduce::block_len(b, d);
    if (s < 1.0)
      scale_block(rows[i] + lo, out + i * d + lo, len, s);
    else
      std::memcpy(out + i * d + lo, rows[i] + lo, len * sizeof(T));
  };

  if (n >= 2 * std::size_t(threads)) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (std::int64_t ii = 0; ii < static_cast<std::int64_t>(n); ++ii) {
      const std::size_t i = std::size_t(ii);
      for (std::size_t b = 0; b < nb; ++b) first(i, b);
      sp[i] = finish(i, &np_[i], &fin[i]);
      if (!adaptive)
        for (std::size_t b = 0; b < nb; ++b) second(i, b, sp[i]);
    }
  } else {
#pragma omp parallel num_threads(threads)
    {
      for (std::size_t i = 0; i < n; ++i) {
#pragma omp for schedule(static)
        for (std::int64_t b = 0; b < static_cast<std::int64_t>(nb); ++b) first(i, std::size_t(b));
        // (implicit barrier)
        double nrm;
        unsigned char ok;
        const double s = finish(i, &nrm, &ok);
        if (!adaptive) {
#pragma omp for schedule(static) nowait
          for (std::int64_t b = 0; b < static_cast<std::int64_t>(nb); ++b) second(i, std::size_t(b), s);
        }
#pragma omp master
        {
          np_[i] = nrm;
          fin[i] = ok;
          sp[i] = s;
        }
      }
    }
  }
  if (!adaptive) return;

  const std::vector<std::size_t> clip = arc_clipped(np_, fin, n, f, sp);
  const std::size_t* cl = clip.data();
  const std::int64_t total = static_cast<std::int64_t>(clip.size() * nb);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (std::int64_t t = 0; t < total; ++t) {
    const std::size_t i = cl[std::size_t(t) / nb], b = std::size_t(t) % nb;
    const std::size_t lo = reduce::block_begin(b), len = reduce::block_len(b, d);
    scale_block(out + i * d + lo, out + i * d + lo, len, sp[i]);
  }
}

// Per-row scale of clipping(f, tau) without writing anything: the same norms
// (same blocked sums, same bits) and the same decisions; a row with
// scale[i] < 1 is clipped to x * scale[i] (scale_block), the others are
// copied. One read of G (fused chains, chain.cpp).
template <typename T>
void clipping_scales(const T* const* rows, std::size_t n, std::size_t d, std::size_t f, double tau, double* scale) {
  const std::size_t nb = reduce::num_blocks(d);
  const int threads = reduce::threads_for(n * d);
  std::vector<double> part(n * nb), norm(n);
  std::vector<unsigned char> fpart(n * nb), finite(n);
  double* pp = part.data();
  unsigned char* fp = fpart.data();
  const std::int64_t total = static_cast<std::int64_t>(n * nb);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (std::int64_t t = 0; t < total; ++t) {
    const std::size_t i = std::size_t(t) / nb, b = std::size_t(t) % nb;
    const std::size_t lo = reduce::block_begin(b), len = reduce::block_len(b, d);
    bool ok = true;
    pp[i * nb + b] = reduce::block_sumsq_finite(rows[i] + lo, len, &ok);
    fp[i * nb + b] = ok ? 1 : 0;
  }
  const bool adaptive = !(tau > 0.0);
  const double inf = std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < n; ++i) {
    unsigned char ok = 1;
    for (std::size_t b = 0; b < nb; ++b) ok &= fp[i * nb + b];
    finite[i] = ok;
    norm[i] = ok ? std::sqrt(reduce::combine_blocks(pp + i * nb, nb)) : inf;
    scale[i] = (ok && !adaptive) ? tau / norm[i] : 1.0;
  }
  if (adaptive) arc_clipped(norm.data(), finite.data(), n, f, scale);
}

template void bucketing<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t s,
                               std::uint64_t seed, float* out);
template void bucketing<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t s,
                                std::uint64_t seed, double* out);
template void clipping<float>(const float* const* rows, std::size_t n, std::size_t d, std::size_t f, double tau,
                              float* out);
template void clipping<double>(const double* const* rows, std::size_t n, std::size_t d, std::size_t f, double tau,
                               double* out);
template void clipping_scales<float>(const float* const*, std::size_t, std::size_t, std::size_t, double, double*);
template void clipping_scales<double>(const double* const*, std::size_t, std::size_t, std::size_t, double, double*);

}  // namespace cpu
}  // namespace pyagg
