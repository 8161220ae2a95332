#include "runtime/job/process_plugins.hpp"

namespace troupe {

process_plugins::process_plugins(plugin_registry& registry, exec_context& context,
                                 std::unique_ptr<gemm_instance> gemm)
    : registry_(registry), context_(context), gemm_(std::move(gemm)) {}

std::shared_ptr<const plugin_library> process_plugins::library_for(const plugin_swap_order& order) {
  if (order.library.empty()) return nullptr;
  std::lock_guard lock(mutex_);
  auto& library = loaded_[order.swap];
  if (!library) {
    plugin_load_options load;
    load.expected_kind = order.kind;
    load.fresh_copy = true;
    try {
      library = registry_.load(order.library, load);
    } catch (...) {
      loaded_.erase(order.swap);
      throw;
    }
  }
  return library;
}

std::int64_t process_plugins::prepare_gemm(const plugin_swap_order& order) {
  auto library = library_for(order);
  std::lock_guard lock(mutex_);
  if (prepared_swap_ == order.swap) return 0;
  prepared_gemm_ = library ? std::make_unique<gemm_instance>(library, instance_options{}) : nullptr;
  prepared_swap_ = order.swap;
  return 1;
}

void process_plugins::commit_gemm(std::int64_t swap) {
  std::lock_guard lock(mutex_);
  if (prepared_swap_ != swap) return;  // done by another holder, or nothing prepared here
  context_.set_gemm_provider(prepared_gemm_ ? prepared_gemm_->provider() : nullptr);
  gemm_ = std::move(prepared_gemm_);
  prepared_swap_ = 0;
}

void process_plugins::abort_gemm(std::int64_t swap) {
  std::lock_guard lock(mutex_);
  if (prepared_swap_ != swap) return;
  prepared_gemm_.reset();
  prepared_swap_ = 0;
}

}  // namespace troupe
