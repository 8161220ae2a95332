#include "kernels/cpu/blas.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace troupe::kernels::cpu {

namespace {

blas_library load() {
  std::vector<std::string> candidates;
  if (const char* chosen = std::getenv("TROUPE_BLAS_LIBRARY"); chosen != nullptr && *chosen != '\0')
    candidates.emplace_back(chosen);
  else
    candidates = {"libopenblas.so.0", "libopenblas.so"};
  std::string failures;
  for (const auto& file : candidates) {
    void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);  // kept open for the process's life
    if (handle == nullptr) {
      const char* why = dlerror();
      failures += "\n  " + file + ": " + (why != nullptr ? why : "not found");
      continue;
    }
    blas_library library;
    library.file = file;
    library.sgemm = reinterpret_cast<decltype(library.sgemm)>(dlsym(handle, "cblas_sgemm"));
    library.set_threads =
        reinterpret_cast<decltype(library.set_threads)>(dlsym(handle, "openblas_set_num_threads"));
    library.get_threads =
        reinterpret_cast<decltype(library.get_threads)>(dlsym(handle, "openblas_get_num_threads"));
    if (library.sgemm == nullptr) {
      failures += "\n  " + file + ": has no cblas_sgemm";
      continue;
    }
    // troupe parallelises on its own worker pool; BLAS threads would compete with it.
    if (library.set_threads != nullptr) library.set_threads(1);
    return library;
  }
  throw std::runtime_error(
      "cannot load a BLAS library (install Debian's libopenblas0, or set TROUPE_BLAS_LIBRARY "
      "to a CBLAS shared library):" +
      failures);
}

}  // namespace

const blas_library& blas() {
  static std::once_flag once;
  static blas_library library;
  static std::string failure;
  std::call_once(once, [] {
    try {
      library = load();
    } catch (const std::exception& e) {
      failure = e.what();
    }
  });
  if (library.sgemm == nullptr) throw std::runtime_error(failure);
  return library;
}

}  // namespace troupe::kernels::cpu
