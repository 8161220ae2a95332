#include "runtime/exec/gradient_squares.hpp"

#include <map>
#include <mutex>

#include "runtime/abi/troupe_plugin.h"

namespace troupe::gradient_squares {

namespace {

struct entry {
  const double* sum = nullptr;
  std::int64_t count = 0;
  std::uint64_t generation = 0;
};

struct registry {
  std::mutex mutex;
  std::map<const float*, entry> sums;
};

registry& state() {
  static auto* r = new registry();  // never destroyed: plugins may withdraw during exit
  return *r;
}

}  // namespace

std::int32_t report(const troupe_exec_context* context, const float* grad, std::int64_t count,
                    const double* sum) {
  if (grad == nullptr) return 0;
  registry& r = state();
  const std::lock_guard lock(r.mutex);
  if (sum == nullptr) {  // a withdrawal needs no context
    r.sums.erase(grad);
    return 1;
  }
  if (context == nullptr || count <= 0) return 0;
  r.sums[grad] = {sum, count, context->gradient_generation};
  return 1;
}

const double* find(const float* grad, std::int64_t count, std::uint64_t generation) {
  registry& r = state();
  const std::lock_guard lock(r.mutex);
  auto it = r.sums.find(grad);
  return it != r.sums.end() && it->second.count == count && it->second.generation == generation
             ? it->second.sum
             : nullptr;
}

}  // namespace troupe::gradient_squares
