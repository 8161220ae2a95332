#include "runtime/stage/async_snapshot.hpp"

#include <chrono>
#include <thread>

#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"

namespace troupe {

// NOTES: the copy stream has the lowest priority, so the copy yields the GPU's copy engine and
// SMs to the step's own work; it only has to finish before the next optimizer step.
async_snapshot::async_snapshot(int ordinal)
    : ordinal_(ordinal), copy_stream_(ordinal, 1 << 20), after_update_(ordinal) {}

async_snapshot::~async_snapshot() {
  try {
    copy_stream_.synchronize();  // the pinned sets outlive no copy into them
  } catch (...) {
  }
}

void async_snapshot::prepare(const std::vector<std::pair<std::string, tensor>>& values) {
  if (layout_.empty()) {
    for (const auto& [name, value] : values) {
      entry e{name, value.shape(), total_bytes_, value.nbytes()};
      total_bytes_ += (e.bytes + 255) / 256 * 256;
      layout_.push_back(std::move(e));
    }
  }
  if (values.size() != layout_.size()) fail("EMA snapshot: the parameters changed between steps");
  for (buffer_set& set : sets_) {
    if (set.arena) continue;
    set.arena = storage::allocate_pinned(total_bytes_);
    set.lease = std::make_shared<int>(0);
    set.copied.emplace(ordinal_);
  }
}

void async_snapshot::start(const std::vector<std::pair<std::string, tensor>>& values,
                           void* compute_stream) {
  if (pending_) fail("an EMA snapshot was started before the last one was taken");
  prepare(values);
  const std::size_t index = next_++ % sets_.size();
  buffer_set& set = sets_[index];
  // Only an EMA actor two snapshots behind holds this set still; one that never lets go (stuck
  // or gone without dropping its mailbox) is an error, not a hang.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  while (set.lease.use_count() > 1) {
    if (std::chrono::steady_clock::now() > deadline)
      fail("EMA snapshot: the EMA actor has held the snapshot of two steps ago for 2 minutes");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  after_update_.record(compute_stream);
  copy_stream_.wait(after_update_);
  auto* base = static_cast<char*>(set.arena->data());
  for (std::size_t i = 0; i < values.size(); ++i) {
    const tensor& value = values[i].second;
    if (value.nbytes() != layout_[i].bytes || values[i].first != layout_[i].name)
      fail("EMA snapshot: parameter {} changed between steps", values[i].first);
    cuda::copy_async(base + layout_[i].offset, value.data(), layout_[i].bytes,
                     cuda::copy_kind::device_to_host, copy_stream_.native(), ordinal_);
  }
  set.copied->record(copy_stream_);
  pending_ = index;
  last_started_ = index;
}

bool async_snapshot::can_start() const {
  const buffer_set& set = sets_[next_ % sets_.size()];
  return !pending_ && (!set.lease || set.lease.use_count() == 1);
}

bool async_snapshot::ready() const {
  return pending_ && sets_[*pending_].copied->done();
}

std::vector<std::pair<std::string, tensor>> async_snapshot::take() {
  if (!pending_) fail("no EMA snapshot is pending");
  buffer_set& set = sets_[*pending_];
  set.copied->synchronize();
  pending_.reset();
  std::vector<std::pair<std::string, tensor>> out;
  auto* base = static_cast<char*>(set.arena->data());
  for (const entry& e : layout_) {
    // A view of the pinned set; its release keeps the set leased until the last view is gone.
    auto view = std::make_shared<storage>(base + e.offset, e.bytes, device::cpu(),
                                          [lease = set.lease, arena = set.arena] {});
    out.emplace_back(e.name, tensor::over(std::move(view), dtype::f32, e.shape));
  }
  return out;
}

void async_snapshot::before_update(void* compute_stream) const {
  if (last_started_) sets_[*last_started_].copied->order_before(compute_stream);
}

}  // namespace troupe
