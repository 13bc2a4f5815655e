// pyagg engine — geometric median in coefficient space, shared by the CPU and
// CUDA backends (engine/src/common; plain host C++, no element type).
//
// With the mean of the finite rows as the start (RFA's start; the spec's
// default), every Weiszfeld iterate is a convex combination z = sum_j c_j x_j
// of the finite rows (sum_j c_j = 1), so everything an iteration needs is in
// the n x n squared-distance matrix D and the squared row norms s_j:
//   ||x_i - z||^2   = sum_j c_j D_ij - q/2,      q = sum_jk c_j c_k D_jk,
//   ||z_new - z||^2 = -1/2 sum_jk e_j e_k D_jk,  e = c_new - c (sum e = 0),
//   ||z||^2         = sum_j c_j s_j - q/2.
// The iteration (shared/spec/rules.md, the same as the direct one):
//   w_i = 1 / max(nu, ||x_i - z||) over the finite rows; W = sum w (row
//   order); W == 0 -> stop; c_new = w / W; stop when ||z_new - z|| <= tol *
//   ||z|| (z: the point before the update); at most max_iter iterations.
// Cost: O(m^2) per iteration on m finite rows, no pass over the data; the
// caller evaluates out = sum_t a[t] x_idx[t] (den = 1) in one pass. The three
// quadratic forms are clamped at 0 (rounding); results agree with the direct
// iteration to the rounding of those forms (tests/test_roofline_rules.py).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/select_next.h"  // Combo

namespace pyagg {
namespace selection {

// How accurately the caller's D was computed: |error of D_ij| <= rel_pair *
// D_ij + rel_norm * (||x_i||^2 + ||x_j||^2) (a difference form has rel_pair,
// a Gram form rel_norm).
struct DistanceAccuracy {
  double rel_pair = 0.0;
  double rel_norm = 0.0;
};

// The accuracy check of the coefficient-space iteration. ||x_t - z||^2 =
// sum_j c_j D_tj - q/2 is a difference of terms whose error is at most
//   bound_t = rel_pair (sum_j c_j D_tj + q/2) + rel_norm (s_t + 2 sum_j c_j s_j)
// (c >= 0, sum c = 1). A far row (a Byzantine x1e6) that keeps a small weight
// makes both terms huge next to the near rows' distances, and D's rounding is
// amplified by that ratio (float32 at n = 20: 7e-4 relative error in the
// output against the direct iteration's 5e-8, before this check). Returns
// false when, at some iteration, a row whose weight depends on its distance
// (distance > nu) has bound_t > target * ||x_t - z||^2: the caller then
// computes D exactly (difference form in double) and runs the iteration again.
// D: n*n (D[i*n+i] == 0 exactly for a finite row, +inf otherwise);
// sqnorm[i]: ||x_i||^2 (read for finite rows only). Returns the coefficients
// of the finite rows (idx ascending, den = 1); no finite row -> an empty
// combination (the output is 0). With acc == nullptr nothing is checked and
// *trusted (if given) is true.
inline Combo geometric_median_coefficients(const double* D, const double* sqnorm, std::size_t n, double nu,
                                           std::int64_t max_iter, double tol,
                                           const DistanceAccuracy* acc = nullptr, double target = 0.0,
                                           bool* trusted = nullptr) {
  if (trusted) *trusted = true;
  std::vector<std::size_t> live;
  for (std::size_t i = 0; i < n; ++i)
    if (D[i * n + i] == 0.0) live.push_back(i);
  const std::size_t m = live.size();
  Combo out;
  out.den = 1.0;
  out.idx = live;
  if (m == 0) return out;
  std::vector<double> Dl(m * m), s(m), c(m, 1.0 / double(m)), cn(m), Dc(m), e(m);
  for (std::size_t t = 0; t < m; ++t) {
    s[t] = sqnorm[live[t]];
    for (std::size_t u = 0; u < m; ++u) Dl[t * m + u] = D[live[t] * n + live[u]];
  }
  auto quad = [&](const std::vector<double>& v, std::vector<double>* Dv) {
    double q = 0.0;
    for (std::size_t t = 0; t < m; ++t) {
      double a = 0.0;
      for (std::size_t u = 0; u < m; ++u) a += Dl[t * m + u] * v[u];
      if (Dv) (*Dv)[t] = a;
      q += v[t] * a;
    }
    return q;
  };
  for (std::int64_t it = 0; it < max_iter; ++it) {
    const double q = quad(c, &Dc);
    double cs = 0.0;  // sum_j c_j s_j
    if (acc)
      for (std::size_t t = 0; t < m; ++t) cs += c[t] * s[t];
    double wsum = 0.0;
    for (std::size_t t = 0; t < m; ++t) {
      const double dist2 = std::max(0.0, Dc[t] - 0.5 * q);
      const double dist = std::sqrt(dist2);
      if (acc && dist > nu) {
        const double bound = acc->rel_pair * (Dc[t] + 0.5 * q) + acc->rel_norm * (s[t] + 2.0 * cs);
        if (!(bound <= target * dist2)) {
          if (trusted) *trusted = false;
          out.a = c;
          return out;
        }
      }
      cn[t] = 1.0 / std::max(nu, dist);
      wsum += cn[t];
    }
    if (!(wsum > 0.0)) break;  // W == 0: z is kept
    for (std::size_t t = 0; t < m; ++t) {
      cn[t] /= wsum;
      e[t] = cn[t] - c[t];
    }
    const double delta = std::sqrt(std::max(0.0, -0.5 * quad(e, nullptr)));
    double zs = 0.0;
    for (std::size_t t = 0; t < m; ++t) zs += c[t] * s[t];
    const double znorm = std::sqrt(std::max(0.0, zs - 0.5 * q));
    c.swap(cn);
    if (delta <= tol * znorm) break;
  }
  out.a = c;
  return out;
}

// Centered clipping in coefficient space (iters >= 2 pays for it: one distance
// pass + one combination pass instead of iters + 1 passes).
// Points p_0 = v0 (the start), p_1..p_m = the finite rows; Dx: (m+1) x (m+1)
// squared distances between them (row-major, Dx[0][t+1] = ||x_t - v0||^2).
// Every iterate is an affine combination v = sum_k w_k p_k (sum_k w_k = 1):
//   ||x_t - v||^2 = sum_k w_k Dx[t+1][k] - 1/2 w^T Dx w,
//   v <- v + (1/n) sum_t c_t (x_t - v)  =>  w <- (1 - S/n) w + c/n (on p_1..),
// with c_t = min(1, tau / ||x_t - v||) (1 when the norm is 0), S = sum c_t,
// n the row count including non-finite rows (shared/spec/rules.md).
// Accuracy guard: `rel` is the relative accuracy of Dx's entries; a norm whose
// clipping decision matters (not surely <= tau) must have bound_t <=
// max_cancel * ||x_t - v||^2 with bound_t = sum_k |w_k| Dx[t+1][k] + 1/2
// |w|^T Dx |w| (the size of the terms that cancel); otherwise returns false
// and the caller runs the direct iteration. On success *w = the final weights.
inline bool centered_clipping_coefficients(const double* Dx, std::size_t m, std::size_t n, double tau,
                                           std::int64_t iters, double rel, double max_cancel,
                                           std::vector<double>* w_out) {
  const std::size_t p = m + 1;
  std::vector<double> w(p, 0.0), aw(p), Dw(p), Daw(p), c(m);
  w[0] = 1.0;
  const double inv_n = 1.0 / static_cast<double>(n);
  const double tau2 = tau * tau;
  for (std::int64_t it = 0; it < iters; ++it) {
    double q = 0.0, qa = 0.0;
    for (std::size_t k = 0; k < p; ++k) aw[k] = std::fabs(w[k]);
    for (std::size_t k = 0; k < p; ++k) {
      double a = 0.0, b = 0.0;
      for (std::size_t l = 0; l < p; ++l) {
        a += Dx[k * p + l] * w[l];
        b += Dx[k * p + l] * aw[l];
      }
      Dw[k] = a;
      Daw[k] = b;
      q += w[k] * a;
      qa += aw[k] * b;
    }
    double S = 0.0;
    for (std::size_t t = 0; t < m; ++t) {
      const double nrm2 = std::max(0.0, Dw[t + 1] - 0.5 * q);
      const double bound = Daw[t + 1] + 0.5 * qa;
      if (nrm2 + rel * bound <= tau2) {
        c[t] = 1.0;  // surely within tau
      } else {
        if (nrm2 == 0.0 || !(bound <= max_cancel * nrm2)) return false;
        c[t] = std::min(1.0, tau / std::sqrt(nrm2));
      }
      S += c[t];
    }
    const double keep = 1.0 - inv_n * S;
    for (std::size_t k = 0; k < p; ++k) w[k] *= keep;
    for (std::size_t t = 0; t < m; ++t) w[t + 1] += inv_n * c[t];
  }
  *w_out = w;
  return true;
}

}  // namespace selection
}  // namespace pyagg
