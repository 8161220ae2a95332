#include "runtime/job/hot_swap.hpp"

#include <optional>

namespace troupe {

behavior hot_swap_handlers(std::shared_ptr<process_plugins> plugins,
                           std::function<std::vector<instance_slot>(plugin_kind)> slots_of,
                           swap_participant own) {
  struct pending_swap {
    plugin_swap_order order;
    std::unique_ptr<instance_swap> instances;  // layer kinds; null for the GEMM
  };
  auto pending = std::make_shared<std::optional<pending_swap>>();
  return behavior()
      .on<prepare_swap>([plugins, pending, slots_of,
                         prepare = own.prepare](prepare_swap& request) -> std::int64_t {
        pending->reset();
        const plugin_swap_order& order = request.order;
        if (prepare) prepare(order);
        if (order.kind == plugin_kind::gemm) {
          const std::int64_t built = plugins->prepare_gemm(order);
          *pending = pending_swap{order, nullptr};
          return built;
        }
        auto instances =
            std::make_unique<instance_swap>(slots_of(order.kind), plugins->library_for(order));
        const auto count = static_cast<std::int64_t>(instances->size());
        *pending = pending_swap{order, std::move(instances)};
        return count;
      })
      .on<commit_swap>([plugins, pending, commit = own.commit](commit_swap&) {
        if (!*pending) fail("commit without a prepared swap");
        if ((*pending)->instances)
          (*pending)->instances->commit();
        else
          plugins->commit_gemm((*pending)->order.swap);
        if (commit) commit((*pending)->order);
        pending->reset();
        return true;
      })
      .on<abort_swap>([plugins, pending](abort_swap&) {
        if (*pending && !(*pending)->instances) plugins->abort_gemm((*pending)->order.swap);
        pending->reset();
        return true;
      });
}

std::int64_t swap_everywhere(blocking_actor& self, const named_actors& holders,
                             const plugin_swap_order& order) {
  // Best effort: a holder that cannot be told to drop its successors is gone anyway (the next
  // step fails on it).
  auto abort_all = [&] {
    try {
      self.ask_each(
          "swap", holders, [](const std::string&) { return abort_swap{}; },
          [](const std::string&, bool&) {});
    } catch (const std::exception&) {
    }
  };
  std::int64_t instances = 0;
  try {
    // Every holder prepares its successors (other processes load the library themselves); any
    // failure drops them all.
    self.ask_each(
        "preparing the swap", holders, [&](const std::string&) { return prepare_swap{order}; },
        [&](const std::string&, std::int64_t& count) { instances += count; });
  } catch (const std::exception& e) {
    abort_all();
    throw swap_refused(swap_refused::reason::failed, e.what());
  }
  if (instances == 0) {
    abort_all();
    throw swap_refused(swap_refused::reason::no_instances,
                       fmt::format("no actor of this job runs a {} plugin", name_of(order.kind)));
  }
  self.ask_each(
      "committing the swap", holders, [](const std::string&) { return commit_swap{}; },
      [](const std::string&, bool&) {});
  return instances;
}

}  // namespace troupe
