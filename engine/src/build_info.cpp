// pyagg engine — build facts (what was compiled in) and CUDA availability.
#include "pyagg/config.h"
#include "pyagg/rules.h"
#include "cpu_dispatch.h"

#ifdef PYAGG_WITH_OPENMP
#include <omp.h>
#endif
#ifdef PYAGG_WITH_CUDA
#include "../cuda/cuda_backend.h"
#endif

namespace pyagg {

BuildInfo build_info() {
  BuildInfo b;
  b.version = PYAGG_VERSION;
#ifdef PYAGG_WITH_OPENMP
  b.openmp = true;
  b.max_threads = omp_get_max_threads();
#else
  b.openmp = false;
  b.max_threads = 1;
#endif
#ifdef PYAGG_WITH_CUDA
  b.cuda = true;
#else
  b.cuda = false;
#endif
  b.cuda_archs = PYAGG_CUDA_ARCHS;
  b.compiler = PYAGG_COMPILER;
  b.build_type = PYAGG_BUILD_TYPE;
#ifdef PYAGG_NATIVE_ARCH
  b.native_arch = true;
#else
  b.native_arch = false;
#endif
  b.cpu_isas = cpu::isas_compiled();
  b.cpu_isa = cpu::isa_in_use();
  return b;
}

Status cuda_device_count(int* count) {
  *count = 0;
#ifdef PYAGG_WITH_CUDA
  return cuda::device_count(count);
#else
  return Status::Unsupported("pyagg was built without CUDA (PYAGG_WITH_CUDA=OFF)");
#endif
}

}  // namespace pyagg
