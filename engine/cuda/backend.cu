// pyagg engine — CUDA backend: entry points (cuda_backend.h), behind the
// engine's single dispatch point (engine/src/rules.cpp, which validated the
// input and resolved m/beta).
//
// Every call: selects g.device_id (restoring the caller's device after),
// checks that the pointers are device memory of that device (a host pointer
// would otherwise fault and poison the CUDA context), takes the device's
// cached workspace (mutex), runs the rule's kernels on the legacy default
// stream and synchronises before returning: outputs are ready when
// aggregate() returns, and every CUDA error becomes a Status.
//
// Distance-based rules: the n x n distance matrix is computed on the GPU in one
// pass over G (distance.cu) and copied to the host (n*n doubles); the
// selection phases then run on the host with the code both backends share
// (common/select_distance.h: krum_select, bulyan_select, bulyan_multikrum_select,
// mda_select, nnm_select), so GPU and CPU choose the same rows whenever their
// distance matrices rank the rows the same way (GPU distances differ from the
// CPU's in the last bits: summation order). O(n^2 log n) host work on a few
// kB, microseconds; a GPU kernel would not be faster at these sizes, and MDA's
// branch and bound is sequential anyway.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "common.cuh"
#include "common/splitmix.h"
#include "common/blocks.h"
#include "common/select_distance.h"
#include "common/select_iterative.h"
#include "common/select_next.h"
#include "cuda_backend.h"

namespace pyagg {
namespace cuda {
namespace {

constexpr cudaStream_t kStream = 0;  // legacy default stream: ordered after the caller's blocking streams

template <typename V>
Status upload(V* dst, const std::vector<V>& src) {
  if (src.empty()) return Status::Ok();
  PYAGG_CUDA_CHECK(cudaMemcpyAsync(dst, src.data(), src.size() * sizeof(V), cudaMemcpyHostToDevice, kStream));
  return Status::Ok();
}

// D (host, n*n) of the rows of x (device).
// exact_double: accumulate float input in double from the start (the
// coefficient-space geometric median: its quadratic forms cancel, see below).
// rel (optional): the plan's relative error bound of every finite D_ij for
// the accumulation actually used (DistancePlan::rel_window / rel_double).
template <typename T>
Status distance_matrix(const T* x, std::size_t n, std::size_t d, const DeviceInfo& dev, Workspace& ws,
                       std::vector<double>* D, bool exact_double = false, double* rel = nullptr) {
  DistancePlan plan;
  PYAGG_RETURN_IF_ERROR(plan_distance<T>(n, d, dev, &plan));
  double *part = nullptr, *Dd = nullptr;
  int* bad = nullptr;
  Arena arena;
  arena.add(&part, plan.partial_doubles);
  arena.add(&bad, n);
  arena.add(&Dd, n * n);
  PYAGG_RETURN_IF_ERROR(arena.commit(ws));
  D->assign(n * n, 0.0);
  for (int attempt = exact_double ? 1 : 0; attempt < 2; ++attempt) {
    const bool force_double = attempt == 1;
    if (rel) *rel = (std::is_same<T, float>::value && !force_double) ? plan.rel_window : plan.rel_double;
    PYAGG_RETURN_IF_ERROR(run_distance<T>(plan, x, part, bad, Dd, force_double, kStream));
    PYAGG_CUDA_CHECK(cudaMemcpyAsync(D->data(), Dd, n * n * sizeof(double), cudaMemcpyDeviceToHost, kStream));
    PYAGG_CUDA_CHECK(cudaStreamSynchronize(kStream));
    if (!std::is_same<T, float>::value || force_double) break;
    // A float partial overflowed for a pair of finite rows (values near the
    // float range): recompute in double, as the CPU does per tile.
    bool overflow = false;
    for (std::size_t i = 0; i < n && !overflow; ++i)
      for (std::size_t j = i + 1; j < n; ++j)
        if ((*D)[i * n + i] == 0.0 && (*D)[j * n + j] == 0.0 && !std::isfinite((*D)[i * n + j])) {
          overflow = true;
          break;
        }
    if (!overflow) break;
  }
  return Status::Ok();
}

// Row-mean sets (CSR) on the device.
struct DeviceSets {
  int* off = nullptr;
  int* idx = nullptr;
};
void add_sets(Arena& arena, DeviceSets* s, std::size_t nsets, std::size_t total) {
  arena.add(&s->off, nsets + 1);
  arena.add(&s->idx, std::max<std::size_t>(total, 1));
}
Status upload_sets(const DeviceSets& s, const std::vector<std::vector<std::size_t>>& sets) {
  std::vector<int> off(1, 0), idx;
  for (const auto& set : sets) {
    for (std::size_t i : set) idx.push_back(int(i));
    off.push_back(int(idx.size()));
  }
  PYAGG_RETURN_IF_ERROR(upload(s.off, off));
  return upload(s.idx, idx);
}
std::size_t total_size(const std::vector<std::vector<std::size_t>>& sets) {
  std::size_t t = 0;
  for (const auto& s : sets) t += s.size();
  return t;
}

template <typename T>
Status mean_of_rows(const T* x, std::size_t d, const std::vector<std::size_t>& sel, T* out, Workspace& ws) {
  DeviceSets s;
  Arena arena;
  add_sets(arena, &s, 1, sel.size());
  PYAGG_RETURN_IF_ERROR(arena.commit(ws));
  PYAGG_RETURN_IF_ERROR(upload_sets(s, {sel}));
  return run_gather_mean<T>(x, d, 1, s.off, s.idx, false, out, d, kStream);
}

// ---- dnc, clipped-clustering, smea, caf, zeroing ------------------------------
// Row statistics (sum of squares and finiteness from run_row_blocks, combined
// in block order; L1 / L-inf partials combined here in block order).
template <typename T>
Status row_stats(const T* x, std::size_t n, std::size_t d, bool abs_norms, Workspace& ws,
                 std::vector<selection::RowStat>* st) {
  const std::size_t nb = reduce_blocks(d);
  double *part = nullptr, *res = nullptr, *l1 = nullptr, *li = nullptr;
  unsigned char *fin = nullptr, *fin_out = nullptr;
  Arena arena;
  arena.add(&part, nb * n);
  arena.add(&fin, nb * n);
  arena.add(&res, n);
  arena.add(&fin_out, n);
  if (abs_norms) {
    arena.add(&l1, nb * n);
    arena.add(&li, nb * n);
  }
  PYAGG_RETURN_IF_ERROR(arena.commit(ws));
  PYAGG_RETURN_IF_ERROR(run_row_blocks<T>(x, n, d, nullptr, nullptr, part, fin, kStream));
  PYAGG_RETURN_IF_ERROR(run_combine(part, fin, nb, n, n, res, fin_out, kStream));
  std::vector<double> hres(n), hl1(abs_norms ? nb * n : 0), hli(abs_norms ? nb * n : 0);
  std::vector<unsigned char> hfin(n);
  if (abs_norms) {
    PYAGG_RETURN_IF_ERROR(run_row_abs<T>(x, n, d, l1, li, kStream));
    PYAGG_CUDA_CHECK(cudaMemcpyAsync(hl1.data(), l1, nb * n * sizeof(double), cudaMemcpyDeviceToHost, kStream));
    PYAGG_CUDA_CHECK(cudaMemcpyAsync(hli.data(), li, nb * n * sizeof(double), cudaMemcpyDeviceToHost, kStream));
  }
  PYAGG_CUDA_CHECK(cudaMemcpyAsync(hres.data(), res, n * sizeof(double), cudaMemcpyDeviceToHost, kStream));
  PYAGG_CUDA_CHECK(cudaMemcpyAsync(hfin.data(), fin_out, n, cudaMemcpyDeviceToHost, kStream));
  PYAGG_CUDA_CHECK(cudaStreamSynchronize(kStream));
  st->assign(n, selection::RowStat{});
  for (std::size_t i = 0; i < n; ++i) {
    selection::RowStat& s = (*st)[i];
    s.sumsq = hres[i];
    s.finite = hfin[i] != 0;
    if (abs_norms)
      for (std::size_t b = 0; b < nb; ++b) {
        s.l1 += hl1[b * n + i];
        s.linf = std::max(s.linf, hli[b * n + i]);
      }
  }
  return Status::Ok();
}

template <typename T>
Status combine_rows(const T* x, std::size_t d, const selection::Combo& c, T* out, Workspace& ws) {
  const std::size_t cnt = c.nan ? 0 : c.idx.size();
  int* idx = nullptr;
  double* a = nullptr;
  Arena arena;
  arena.add(&idx, std::max<std::size_t>(cnt, 1));
  arena.add(&a, std::max<std::size_t>(cnt, 1));
  PYAGG_RETURN_IF_ERROR(arena.commit(ws));
  std::vector<int> hidx(c.idx.begin(), c.idx.begin() + std::ptrdiff_t(cnt));
  std::vector<double> ha(c.a.begin(), c.a.begin() + std::ptrdiff_t(cnt));
  PYAGG_RETURN_IF_ERROR(upload(idx, hidx));
  PYAGG_RETURN_IF_ERROR(upload(a, ha));
  return run_combine_rows<T>(x, d, idx, a, cnt, c.den, c.nan, out, kStream);
}

// Device memory owned for the duration of a call (DnC's gathered columns: the
// workspace is re-carved by every distance pass).
template <typename V>
struct DeviceBuffer {
  V* p = nullptr;
  ~DeviceBuffer() {
    if (p) (void)cudaFree(p);
  }
  Status alloc(std::size_t count) {
    PYAGG_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), std::max<std::size_t>(count, 1) * sizeof(V)));
    return Status::Ok();
  }
};

template <typename T>
Status run_rule_next(const RuleConfig& r, const T* x, std::size_t n, std::size_t d, T* out, const DeviceInfo& dev,
                     Workspace& ws) {
  std::vector<selection::RowStat> st;
  PYAGG_RETURN_IF_ERROR(row_stats<T>(x, n, d, selection::needs_abs_norms(r), ws, &st));
  selection::Combo c;
  if (r.rule == RuleId::kZeroing) {
    c = selection::zeroing(r, st);
  } else if (r.rule == RuleId::kDnc) {
    Status err = Status::Ok();
    DeviceBuffer<T> buf;
    DeviceBuffer<long long> cols;
    if (std::size_t(r.sub_dim) < d) {
      PYAGG_RETURN_IF_ERROR(buf.alloc(n * std::size_t(r.sub_dim)));
      PYAGG_RETURN_IF_ERROR(cols.alloc(std::size_t(r.sub_dim)));
    }
    c = selection::dnc(r, n, d, st, [&](const std::vector<std::size_t>* coords, std::vector<double>* D) {
      D->assign(n * n, 0.0);
      if (!err.ok()) return;
      if (!coords) {
        err = distance_matrix<T>(x, n, d, dev, ws, D);
        return;
      }
      const std::vector<long long> hc(coords->begin(), coords->end());
      err = upload(cols.p, hc);
      if (err.ok()) err = run_gather_cols<T>(x, n, d, cols.p, hc.size(), buf.p, kStream);
      if (err.ok()) err = distance_matrix<T>(buf.p, n, hc.size(), dev, ws, D);
    });
    PYAGG_RETURN_IF_ERROR(err);
  } else {
    std::vector<double> D;
    PYAGG_RETURN_IF_ERROR(distance_matrix<T>(x, n, d, dev, ws, &D));
    c = selection::from_distances(r, D.data(), n, st);
  }
  return combine_rows<T>(x, d, c, out, ws);
}

template <typename T>
Status run_zeroing_pre(const PreConfig& pc, const T* x, std::size_t n, std::size_t d, T* out, Workspace& ws) {
  std::vector<selection::RowStat> st;
  PYAGG_RETURN_IF_ERROR(row_stats<T>(x, n, d, pc.norm_order != 2, ws, &st));
  const auto keep = selection::zeroing_keep(st, pc.tau, pc.norm_order);
  for (std::size_t i = 0; i < n; ++i) {
    if (keep[i])
      PYAGG_CUDA_CHECK(cudaMemcpyAsync(out + i * d, x + i * d, d * sizeof(T), cudaMemcpyDeviceToDevice, kStream));
    else
      PYAGG_CUDA_CHECK(cudaMemsetAsync(out + i * d, 0, d * sizeof(T), kStream));
  }
  return Status::Ok();
}

template <typename T>
Status run_rule(const RuleConfig& r, const T* x, std::size_t n, std::size_t d, T* out, const T* state,
                const DeviceInfo& dev, Workspace& ws) {
  const std::size_t f = r.f;
  auto coordinate = [&](CoordOp op, std::size_t nw, const WireSource& src, std::size_t param,
                        const std::vector<int>* rows) -> Status {
    unsigned char* scratch = nullptr;
    int* rows_d = nullptr;
    Arena arena;
    arena.add(&scratch, coord_scratch_bytes(nw, d, sizeof(T)));
    if (rows) arena.add(&rows_d, rows->size());
    PYAGG_RETURN_IF_ERROR(arena.commit(ws));
    WireSource s = src;
    if (rows) {
      PYAGG_RETURN_IF_ERROR(upload(rows_d, *rows));
      s.rows = rows_d;
    }
    return run_coordinate<T>(op, x, d, nw, s, param, out, scratch, dev, kStream);
  };

  switch (r.rule) {
    case RuleId::kAverage: return run_average<T>(x, n, d, false, out, kStream);
    case RuleId::kAverageNan: return run_average<T>(x, n, d, true, out, kStream);
    case RuleId::kMedian: return coordinate(CoordOp::kMedian, n, WireSource{}, 0, nullptr);
    case RuleId::kTrimmedMean: return coordinate(CoordOp::kTrimmedMean, n, WireSource{}, f, nullptr);
    case RuleId::kAveragedMedian:
      return coordinate(CoordOp::kAveragedMedian, n, WireSource{}, std::size_t(r.beta), nullptr);
    case RuleId::kGeometricMedian: {
      if (r.gm_init == 1) return run_geometric_median<T>(r, x, n, d, out, dev, ws, kStream);  // init=median
      // Default start (mean of the finite rows): the CPU's coefficient-space
      // iteration (common/select_iterative.h) on the GPU's distance matrix and
      // row norms, then one combination pass; no per-iteration host sync.
      // The iteration evaluates ||x_i - z||^2 = sum_j c_j D_ij - q/2, which
      // cancels when a far row (e.g. x1e6) keeps a small weight: D's rounding
      // is amplified by the ratio of the far distances to the near ones. So D
      // is accumulated in the CPU's precision class for this n
      // (common/blocks.h kGramMinN): float partial sums for n <= 32 (the
      // CPU's float-lane difference form), double above (the CPU's double
      // Gram form); float partials against the CPU's double Gram gave errors
      // up to 1e2 relative at n = 150 (byz-big) in test_cuda.
      std::vector<double> D;
      selection::DistanceAccuracy acc;
      PYAGG_RETURN_IF_ERROR(
          distance_matrix<T>(x, n, d, dev, ws, &D, /*exact_double=*/n > kGramMinN, &acc.rel_pair));
      std::vector<selection::RowStat> st;
      PYAGG_RETURN_IF_ERROR(row_stats<T>(x, n, d, false, ws, &st));
      std::vector<double> sq(n);
      for (std::size_t i = 0; i < n; ++i) sq[i] = st[i].sumsq;
      // The accuracy check of the CPU (cpu/iterative.cpp), with the kernel's
      // rigorous bound for the accumulation it used: float partial sums
      // (float input, n <= kGramMinN) or double accumulation, then exact D,
      // then the direct iteration from the mean of the finite rows.
      constexpr bool is_float = std::is_same<T, float>::value;
      const double target = is_float ? 1e-5 : 1e-10;
      bool trusted = true;
      selection::Combo c = selection::geometric_median_coefficients(D.data(), sq.data(), n, r.nu, r.max_iter, r.tol,
                                                                    &acc, target, &trusted);
      if (!trusted && is_float && n <= kGramMinN) {
        PYAGG_RETURN_IF_ERROR(distance_matrix<T>(x, n, d, dev, ws, &D, /*exact_double=*/true, &acc.rel_pair));
        c = selection::geometric_median_coefficients(D.data(), sq.data(), n, r.nu, r.max_iter, r.tol, &acc, target,
                                                     &trusted);
      }
      if (!trusted) {
        std::vector<std::size_t> live;
        for (std::size_t i = 0; i < n; ++i)
          if (D[i * n + i] == 0.0) live.push_back(i);
        // The direct iteration from the mean of the finite rows, in double (the CPU's z0).
        return run_geometric_median<T>(r, x, n, d, out, dev, ws, kStream, &live);
      }
      return combine_rows<T>(x, d, c, out, ws);
    }
    case RuleId::kCenteredClipping: return run_centered_clipping<T>(r, x, n, d, state, out, ws, kStream);
    case RuleId::kDnc:
    case RuleId::kClippedClustering:
    case RuleId::kSmea:
    case RuleId::kCaf:
    case RuleId::kZeroing: return run_rule_next<T>(r, x, n, d, out, dev, ws);
    default: break;
  }

  // Distance-based rules.
  std::vector<double> D;
  PYAGG_RETURN_IF_ERROR(distance_matrix<T>(x, n, d, dev, ws, &D));
  switch (r.rule) {
    case RuleId::kKrum: {
      const auto sel = selection::krum_select(D.data(), n, f, 1);
      PYAGG_CUDA_CHECK(
          cudaMemcpyAsync(out, x + sel[0] * d, d * sizeof(T), cudaMemcpyDeviceToDevice, kStream));
      return Status::Ok();
    }
    case RuleId::kMultiKrum: {
      auto sel = selection::krum_select(D.data(), n, f, std::size_t(r.m));
      std::sort(sel.begin(), sel.end());
      return mean_of_rows<T>(x, d, sel, out, ws);
    }
    case RuleId::kMda: {
      const auto sel = selection::mda_select(D.data(), n, f);
      return mean_of_rows<T>(x, d, sel, out, ws);
    }
    case RuleId::kBulyan: {
      auto sel = selection::bulyan_select(D.data(), n, f);
      std::sort(sel.begin(), sel.end());  // the coordinate phase sees the rows in index order
      const std::size_t theta = sel.size();
      std::vector<int> rows(sel.begin(), sel.end());
      return coordinate(CoordOp::kAveragedMedian, theta, WireSource{}, theta - 2 * f, &rows);
    }
    case RuleId::kBulyanMultiKrum: {
      const auto sets = selection::bulyan_multikrum_select(D.data(), n, f, std::size_t(r.m));
      const std::size_t theta = sets.size();
      unsigned char* scratch = nullptr;
      DeviceSets s;
      Arena arena;
      arena.add(&scratch, coord_scratch_bytes(theta, d, sizeof(T)));
      add_sets(arena, &s, theta, total_size(sets));
      PYAGG_RETURN_IF_ERROR(arena.commit(ws));
      PYAGG_RETURN_IF_ERROR(upload_sets(s, sets));
      WireSource src;
      src.set_off = s.off;
      src.set_idx = s.idx;
      return run_coordinate<T>(CoordOp::kAveragedUpperMedian, x, d, theta, src, theta - 2 * f, out, scratch, dev,
                              kStream);
    }
    default: break;
  }
  return Status::Internal("CUDA backend: unhandled rule id " + std::to_string(int(r.rule)));
}

template <typename T>
Status run_pre(const PreConfig& c, const T* x, std::size_t n, std::size_t d, T* out, const DeviceInfo& dev,
               Workspace& ws) {
  switch (c.pre) {
    case PreId::kNnm: {
      std::vector<double> D;
      PYAGG_RETURN_IF_ERROR(distance_matrix<T>(x, n, d, dev, ws, &D));
      // Rows with the same neighbour set (typically all honest rows) share
      // one mean: computed once, copied (the same bits, as the CPU does).
      std::vector<std::vector<std::size_t>> uniq;
      std::vector<int> uniq_row;        // output row of each distinct set
      std::vector<std::size_t> same(n);  // row i's distinct set
      for (std::size_t i = 0; i < n; ++i) {
        auto si = selection::nnm_select(D.data(), n, c.f, i);
        std::size_t u = 0;
        while (u < uniq.size() && uniq[u] != si) ++u;
        if (u == uniq.size()) {
          uniq.push_back(std::move(si));
          uniq_row.push_back(int(i));
        }
        same[i] = u;
      }
      DeviceSets s;
      int* rows_d = nullptr;
      Arena arena;
      add_sets(arena, &s, uniq.size(), total_size(uniq));
      arena.add(&rows_d, uniq_row.size());
      PYAGG_RETURN_IF_ERROR(arena.commit(ws));
      PYAGG_RETURN_IF_ERROR(upload_sets(s, uniq));
      PYAGG_RETURN_IF_ERROR(upload(rows_d, uniq_row));
      PYAGG_RETURN_IF_ERROR(run_gather_mean<T>(x, d, uniq.size(), s.off, s.idx, false, out, d, kStream, rows_d));
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t src = std::size_t(uniq_row[same[i]]);
        if (src != i)
          PYAGG_CUDA_CHECK(cudaMemcpyAsync(out + i * d, out + src * d, d * sizeof(T), cudaMemcpyDeviceToDevice,
                                           kStream));
      }
      return Status::Ok();
    }
    case PreId::kBucketing: {
      const std::size_t sz = std::size_t(c.bucket_size);
      const std::vector<std::size_t> perm = shuffled_indices(n, c.seed);  // the CPU's shuffle
      const std::size_t nbk = (n + sz - 1) / sz;
      std::vector<std::vector<std::size_t>> sets(nbk);
      for (std::size_t b = 0; b < nbk; ++b)
        for (std::size_t q = b * sz; q < std::min(n, (b + 1) * sz); ++q) sets[b].push_back(perm[q]);
      DeviceSets s;
      Arena arena;
      add_sets(arena, &s, nbk, n);
      PYAGG_RETURN_IF_ERROR(arena.commit(ws));
      PYAGG_RETURN_IF_ERROR(upload_sets(s, sets));
      return run_gather_mean<T>(x, d, nbk, s.off, s.idx, true, out, d, kStream);
    }
    case PreId::kClipping: return run_clipping<T>(c, x, n, d, out, ws, kStream);
    case PreId::kZeroing: return run_zeroing_pre<T>(c, x, n, d, out, ws);
  }
  return Status::Internal("CUDA backend: unhandled pre-aggregator id " + std::to_string(int(c.pre)));
}

// Common frame: device, pointers, workspace, synchronisation, exceptions.
template <typename Fn>
Status with_device(const GradView& g, const void* out, const void* state, const char* what, Fn&& fn) {
  try {
    if (g.rows) return Status::Invalid("the CUDA backend needs a contiguous n*d block, got row pointers");
    DeviceGuard guard;
    PYAGG_RETURN_IF_ERROR(guard.set(g.device_id));
    PYAGG_RETURN_IF_ERROR(check_device_pointer(g.data, g.device_id, "gradients (GradView.data)"));
    PYAGG_RETURN_IF_ERROR(check_device_pointer(out, g.device_id, "output"));
    if (state) PYAGG_RETURN_IF_ERROR(check_device_pointer(state, g.device_id, "state"));
    DeviceInfo dev;
    PYAGG_RETURN_IF_ERROR(device_info(g.device_id, &dev));
    Workspace& ws = workspace(g.device_id);
    std::lock_guard<std::mutex> lock(ws.mu);
    Status st = fn(dev, ws);
    // Drain the stream whatever happened, and report an asynchronous error.
    const cudaError_t e = cudaStreamSynchronize(kStream);
    if (!st.ok()) return st;
    if (e != cudaSuccess) return cuda_error(what, e);
    return Status::Ok();
  } catch (const std::bad_alloc&) {
    return Status::OutOfMemory(std::string("out of host memory in the CUDA backend (") + what + ")");
  } catch (const std::exception& ex) {
    return Status::Internal(std::string("internal error in the CUDA backend: ") + ex.what());
  } catch (...) {
    return Status::Internal("internal error in the CUDA backend: unknown exception");
  }
}

}  // namespace

Status aggregate(const RuleConfig& r, const GradView& g, void* out, const void* state) {
  const void* st = r.rule == RuleId::kCenteredClipping ? state : nullptr;
  return with_device(g, out, st, "aggregate", [&](const DeviceInfo& dev, Workspace& ws) -> Status {
    if (g.dtype == DType::kFloat32)
      return run_rule<float>(r, static_cast<const float*>(g.data), g.n, g.d, static_cast<float*>(out),
                             static_cast<const float*>(st), dev, ws);
    return run_rule<double>(r, static_cast<const double*>(g.data), g.n, g.d, static_cast<double*>(out),
                            static_cast<const double*>(st), dev, ws);
  });
}

Status preaggregate(const PreConfig& c, const GradView& g, void* out) {
  return with_device(g, out, nullptr, "preaggregate", [&](const DeviceInfo& dev, Workspace& ws) -> Status {
    if (g.dtype == DType::kFloat32)
      return run_pre<float>(c, static_cast<const float*>(g.data), g.n, g.d, static_cast<float*>(out), dev, ws);
    return run_pre<double>(c, static_cast<const double*>(g.data), g.n, g.d, static_cast<double*>(out), dev, ws);
  });
}

Status pairwise_sqdist(const GradView& g, double* D) {
  if (!D) return Status::Invalid("pairwise_sqdist: null output");
  if (g.n == 0 || g.d == 0) return Status::Invalid("pairwise_sqdist: empty input");
  return with_device(g, g.data, nullptr, "pairwise_sqdist", [&](const DeviceInfo& dev, Workspace& ws) -> Status {
    std::vector<double> h;
    if (g.dtype == DType::kFloat32)
      PYAGG_RETURN_IF_ERROR(distance_matrix<float>(static_cast<const float*>(g.data), g.n, g.d, dev, ws, &h));
    else
      PYAGG_RETURN_IF_ERROR(distance_matrix<double>(static_cast<const double*>(g.data), g.n, g.d, dev, ws, &h));
    std::memcpy(D, h.data(), h.size() * sizeof(double));
    return Status::Ok();
  });
}

}  // namespace cuda
}  // namespace pyagg
