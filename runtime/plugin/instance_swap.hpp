#pragma once

// A hot swap of one layer plugin inside one holder (a pipeline rank, an expert shard), in two
// phases so that a job either swaps everywhere or nowhere: prepare builds every successor
// instance (create, parameter check, bind, state import) while the old ones stay in place;
// commit puts them in place. Dropping a prepared swap leaves the holder as it was.

#include <memory>
#include <vector>

#include "runtime/plugin/instance.hpp"

namespace troupe {

/// Where a layer plugin's instance lives in a model: a swap replaces what it points to.
using instance_slot = std::unique_ptr<layer_instance>*;

class instance_swap {
 public:
  /// Builds a successor from `library` for every slot. Throws (naming the plugin and the cause)
  /// at the first failure; nothing is replaced.
  instance_swap(const std::vector<instance_slot>& slots,
                const std::shared_ptr<const plugin_library>& library);

  /// Puts the successors in place. The old instances are destroyed; their library stays loaded.
  void commit();
  std::size_t size() const { return successors_.size(); }

 private:
  std::vector<std::pair<instance_slot, std::unique_ptr<layer_instance>>> successors_;
};

}  // namespace troupe
