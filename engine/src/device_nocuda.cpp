// pyagg engine — device memory helpers when CUDA is not compiled in: every call
// says so. (With CUDA, engine/cuda/memory.cu provides them.)
#include "pyagg/device.h"

namespace pyagg {
namespace {
Status no_cuda() { return Status::Unsupported("pyagg was built without CUDA (PYAGG_WITH_CUDA=OFF)"); }
}  // namespace

Status device_malloc(int, std::size_t, void** ptr) {
  if (ptr) *ptr = nullptr;
  return no_cuda();
}
Status device_free(int, void*) { return no_cuda(); }
Status copy_host_to_device(int, void*, const void*, std::size_t) { return no_cuda(); }
Status copy_device_to_host(int, void*, const void*, std::size_t) { return no_cuda(); }
Status device_synchronize(int) { return no_cuda(); }

}  // namespace pyagg
