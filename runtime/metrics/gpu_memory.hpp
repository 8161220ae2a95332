#pragma once

// GPU memory as Prometheus sees it: what each of troupe's stream-ordered pools
// (runtime/device/memory_pool.hpp) holds, read at every scrape.

#include <memory>

namespace prometheus {
class Collectable;
}

namespace troupe {

/// troupe_gpu_memory_{reserved,in_use,peak_reserved,peak_in_use}_bytes{device="cuda:N"} for
/// every pool the process has made (nothing before it touches a GPU).
std::shared_ptr<prometheus::Collectable> gpu_memory_collectable();

}  // namespace troupe
