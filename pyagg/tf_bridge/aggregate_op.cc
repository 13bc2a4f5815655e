// pyagg TensorFlow bridge — the PyaggAggregate custom op.
//
// A thin front end over the engine (engine/include/pyagg/rules.h): the rule is
// parsed and its parameters validated by pyagg::make_rule in the kernel
// constructor, the input size by pyagg::check_rule_input / pyagg::aggregate in
// Compute, so a bad rule, f, parameter, n or d gives the same message as the
// Python API (pyagg.aggregate), as an InvalidArgument error. There is no copy
// of any rule here: the kernel hands TF's buffers to the engine as they are.
//
//   PyaggAggregate(gradients: T[n, d], state: T[d] or T[0]) -> aggregated: T[d]
//     attrs  T in {float32, float64}
//            rule: string               a rule name of shared/spec/rules.md
//            f: int = 0                 declared number of Byzantine rows
//            param_names: list(string)  rule parameters (engine names, e.g. "m")
//            param_values: list(string) their values, as decimal strings, so a
//                                       double crosses the op boundary exactly
//                                       (TF float attrs are 32-bit)
//     state  centered-clipping's starting point v (the previous output); an
//            empty tensor means v = 0. The op is stateless: the caller (the
//            Python ServerAggregator) keeps v. Other rules ignore state.
//
// The CPU kernel is always registered. The GPU kernel is compiled when TF was
// built with CUDA (GOOGLE_CUDA, set by CMakeLists.txt from
// tf.sysconfig.get_build_info()) and the engine has its CUDA backend
// (PYAGG_WITH_CUDA in pyagg/config.h): it hands the device buffers to the
// engine's CUDA backend (GradView.device = kCuda). The engine's CUDA backend
// runs on its own stream and synchronizes before returning, so the kernel
// first waits for TF's compute stream (the inputs must be computed), then
// calls the engine; the output is complete when Compute returns.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "pyagg/config.h"
#include "pyagg/rules.h"
#include "pyagg/status.h"
#include "pyagg/types.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"

#if GOOGLE_CUDA && defined(PYAGG_WITH_CUDA)
#define PYAGG_TF_GPU_KERNEL 1
#include "xla/stream_executor/stream.h"
#include "xla/stream_executor/stream_executor.h"
#endif

#ifndef PYAGG_TF_BUILT_VERSION
#error "PYAGG_TF_BUILT_VERSION must be defined by the build (pyagg/tf_bridge/CMakeLists.txt)"
#endif

namespace pyagg_tf {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
namespace shape_inference = ::tensorflow::shape_inference;

// Engine Status -> TF status: bad input is InvalidArgument (same message).
absl::Status to_tf(const pyagg::Status& st) {
  switch (st.code()) {
    case pyagg::StatusCode::kOk: return absl::OkStatus();
    case pyagg::StatusCode::kInvalidArgument: return absl::InvalidArgumentError(st.message());
    case pyagg::StatusCode::kUnsupported: return absl::UnimplementedError(st.message());
    case pyagg::StatusCode::kOutOfMemory: return absl::ResourceExhaustedError(st.message());
    case pyagg::StatusCode::kTimeout: return absl::DeadlineExceededError(st.message());
    default: return absl::InternalError(st.message());
  }
}

// Parses one parameter value written by the Python side with repr(float):
// the whole string must be a number ("inf" and "nan" included: the engine then
// refuses them with its own message).
absl::Status parse_value(const std::string& name, const std::string& text, double* out) {
  const char* s = text.c_str();
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s, &end);
  if (text.empty() || end != s + text.size())
    return absl::InvalidArgumentError(absl::StrCat("parameter ", name, ": value '", text, "' is not a number"));
  *out = v;
  return absl::OkStatus();
}

template <typename T>
constexpr pyagg::DType dtype_of();
template <>
constexpr pyagg::DType dtype_of<float>() { return pyagg::DType::kFloat32; }
template <>
constexpr pyagg::DType dtype_of<double>() { return pyagg::DType::kFloat64; }

template <typename T, pyagg::Device kDevice>
class PyaggAggregateOp : public OpKernel {
 public:
  explicit PyaggAggregateOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string rule;
    std::int64_t f = 0;
    std::vector<std::string> names, values;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rule", &rule));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("f", &f));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("param_names", &names));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("param_values", &values));
    OP_REQUIRES(ctx, names.size() == values.size(),
                absl::InvalidArgumentError(absl::StrCat("param_names and param_values must have the same length, got ",
                                                        names.size(), " names and ", values.size(), " values")));
    std::vector<pyagg::NamedParam> params;
    params.reserve(names.size());
    for (std::size_t i = 0; i < names.size(); ++i) {
      double v = 0;
      if (parse_value(names[i], values[i], &v).ok() &&
          values[i].find_first_not_of("0123456789") != std::string::npos) {
        params.push_back({names[i], v, ""});
      } else {
        // A named choice ("single") or an exact decimal integer (a 64-bit
        // seed): the engine reads the text and names a bad one itself.
        params.push_back({names[i], std::numeric_limits<double>::quiet_NaN(), values[i]});
      }
    }
    // The engine's own parsing and validation: same messages as pyagg.aggregate.
    OP_REQUIRES_OK(ctx, to_tf(pyagg::make_rule(rule, static_cast<std::int64_t>(f), params, &cfg_)));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& grads = ctx->input(0);
    const Tensor& state = ctx->input(1);
    // Eager execution does not run the shape function: check here too.
    OP_REQUIRES(ctx, grads.dims() == 2,
                absl::InvalidArgumentError(absl::StrCat(
                    "gradients must be a rank-2 tensor [n, d] (one row per worker), got shape ",
                    grads.shape().DebugString())));
    const std::size_t n = static_cast<std::size_t>(grads.dim_size(0));
    const std::size_t d = static_cast<std::size_t>(grads.dim_size(1));
    // Bounds that depend on n and d (n against the rule's bound, d >= 1, m and
    // beta ranges): the engine's check, before anything is allocated.
    OP_REQUIRES_OK(ctx, to_tf(pyagg::check_rule_input(cfg_, n, d)));
    const bool has_state = state.NumElements() > 0;
    OP_REQUIRES(ctx, state.dims() == 1 && (!has_state || static_cast<std::size_t>(state.dim_size(0)) == d),
                absl::InvalidArgumentError(absl::StrCat("state must be a rank-1 tensor of d=", d,
                                                        " elements (or empty for v = 0), got shape ",
                                                        state.shape().DebugString())));

    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({static_cast<std::int64_t>(d)}), &out));

    pyagg::GradView view;
    view.data = grads.flat<T>().data();
    view.n = n;
    view.d = d;
    view.dtype = dtype_of<T>();
    view.device = kDevice;
    const void* v0 = has_state ? static_cast<const void*>(state.flat<T>().data()) : nullptr;
#ifdef PYAGG_TF_GPU_KERNEL
    if (kDevice == pyagg::Device::kCuda) {
      auto* stream = ctx->op_device_context() ? ctx->op_device_context()->stream() : nullptr;
      OP_REQUIRES(ctx, stream != nullptr, absl::InternalError("PyaggAggregate: no GPU stream"));
      view.device_id = stream->parent()->device_ordinal();
      // The inputs are produced on TF's stream; the engine uses its own.
      OP_REQUIRES_OK(ctx, stream->BlockHostUntilDone());
    }
#endif
    // The op is stateless (centered-clipping's state is an input): a kernel
    // cached by TF must not carry clipped-clustering's norm history from one
    // run to the next, so each run starts a fresh one (norm_history = call).
    pyagg::RuleConfig cfg = cfg_;
    if (cfg.history) cfg.history = std::make_shared<pyagg::NormHistory>();
    OP_REQUIRES_OK(ctx, to_tf(pyagg::aggregate(cfg, view, out->flat<T>().data(), v0)));
  }

 private:
  pyagg::RuleConfig cfg_;
};

}  // namespace pyagg_tf

REGISTER_OP("PyaggAggregate")
    .Input("gradients: T")
    .Input("state: T")
    .Output("aggregated: T")
    .Attr("T: {float32, float64}")
    .Attr("rule: string")
    .Attr("f: int = 0")
    .Attr("param_names: list(string) = []")
    .Attr("param_values: list(string) = []")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) -> absl::Status {
      ::tensorflow::shape_inference::ShapeHandle g, s;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &g));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &s));
      c->set_output(0, c->Vector(c->Dim(g, 1)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Byzantine-resilient aggregation of n gradients (pyagg engine).

gradients: [n, d], one row per worker.
state: centered-clipping's starting point v, shape [d]; an empty tensor means v = 0.
aggregated: [d], the rule's output.
rule: rule name (see pyagg.rules()).
f: declared number of Byzantine workers.
param_names: rule parameter names.
param_values: rule parameter values, as decimal strings (exact doubles).
)doc");

#define PYAGG_REGISTER_CPU(T)                                                             \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name("PyaggAggregate").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),    \
      ::pyagg_tf::PyaggAggregateOp<T, ::pyagg::Device::kCpu>);
PYAGG_REGISTER_CPU(float)
PYAGG_REGISTER_CPU(double)
#undef PYAGG_REGISTER_CPU

#ifdef PYAGG_TF_GPU_KERNEL
#define PYAGG_REGISTER_GPU(T)                                                             \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name("PyaggAggregate").Device(::tensorflow::DEVICE_GPU).TypeConstraint<T>("T"),    \
      ::pyagg_tf::PyaggAggregateOp<T, ::pyagg::Device::kCuda>);
PYAGG_REGISTER_GPU(float)
PYAGG_REGISTER_GPU(double)
#undef PYAGG_REGISTER_GPU
#endif

// Build facts compiled into the library, read by pyagg/tf_bridge/__init__.py
// (ctypes) to cross-check _build_info.json. Plain C, no TF types.
extern "C" {
__attribute__((visibility("default"))) const char* pyagg_tf_built_version() { return PYAGG_TF_BUILT_VERSION; }
__attribute__((visibility("default"))) int pyagg_tf_gpu_kernel() {
#ifdef PYAGG_TF_GPU_KERNEL
  return 1;
#else
  return 0;
#endif
}
}
