#pragma once

// EMA snapshots of parameters that live on a GPU, without stalling the step. After an optimizer
// step the values are copied on a side stream into pinned host memory, double-buffered: the next
// step's forward runs while the copy does, and the snapshot goes to the EMA actor once the copy is
// complete. The next optimizer step waits for the copy on the GPU (not the host) before it writes
// the values again, and a buffer set is reused only once every tensor sent from it has been let
// go (the EMA actor has folded it in); only an EMA actor two snapshots behind makes a step wait.

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "runtime/device/stream.hpp"
#include "runtime/tensor/tensor.hpp"

namespace troupe {

class async_snapshot {
 public:
  /// Snapshots of tensors on cuda:`ordinal`.
  explicit async_snapshot(int ordinal);
  ~async_snapshot();
  async_snapshot(const async_snapshot&) = delete;
  async_snapshot& operator=(const async_snapshot&) = delete;

  /// Lays out `values` (device tensors, as start() will get them) and allocates both pinned
  /// buffer sets now: at build time, so a first snapshot does not pay for the allocation (seconds
  /// for tens of GB of pinned memory) and a host without the memory fails before step 1.
  void prepare(const std::vector<std::pair<std::string, tensor>>& values);
  /// Starts copying `values` (device tensors, the same names and shapes every time) as they are
  /// after the work enqueued on `compute_stream` so far. A snapshot not yet taken is an error.
  void start(const std::vector<std::pair<std::string, tensor>>& values, void* compute_stream);
  /// Whether start() would begin at once: the buffer set it fills is not held by the EMA actor
  /// any more (false when the EMA is two snapshots behind).
  bool can_start() const;
  /// Whether a snapshot was started and not taken yet.
  bool pending() const { return pending_.has_value(); }
  /// Whether the pending snapshot's copy has finished (never waits).
  bool ready() const;
  /// The pending snapshot as host tensors (views of the pinned set), waiting for its copy if it
  /// is still running.
  std::vector<std::pair<std::string, tensor>> take();
  /// Makes work enqueued on `compute_stream` from now on wait until the last copy has read the
  /// values (before an optimizer step writes them).
  void before_update(void* compute_stream) const;

 private:
  struct entry {
    std::string name;
    std::vector<std::int64_t> shape;
    std::size_t offset = 0, bytes = 0;
  };
  struct buffer_set {
    std::shared_ptr<storage> arena;  ///< pinned host memory for every value
    std::shared_ptr<int> lease;      ///< held by every tensor handed out from the set
    std::optional<cuda::event> copied;
  };

  int ordinal_;
  cuda::stream copy_stream_;
  cuda::event after_update_;
  std::vector<entry> layout_;
  std::size_t total_bytes_ = 0;
  std::array<buffer_set, 2> sets_;
  std::size_t next_ = 0;
  std::optional<std::size_t> pending_, last_started_;
};

}  // namespace troupe
