#include "runtime/job/job_control.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace troupe {

control_reply job_control::at_step_boundary(boundary_work work, std::chrono::milliseconds timeout) {
  auto entry = std::make_shared<item>();
  entry->work = std::move(work);
  auto reply = entry->reply.get_future();
  {
    std::lock_guard lock(mutex_);
    if (!closed_.empty()) return control_error(503, closed_);
    items_.push_back(entry);
  }
  queued_.notify_all();
  if (reply.wait_for(timeout) == std::future_status::ready) return reply.get();
  std::lock_guard lock(mutex_);
  const auto it = std::find(items_.begin(), items_.end(), entry);
  if (it != items_.end()) {
    items_.erase(it);
    return control_error(503, fmt::format("no step boundary within {} s (is a step stuck?); "
                                          "the request was dropped",
                                          timeout.count() / 1000.0));
  }
  // The coordinator took it: it finishes what it started.
  return reply.get();
}

void job_control::run_queued(blocking_actor& coordinator) {
  for (;;) {
    std::shared_ptr<item> next;
    {
      std::lock_guard lock(mutex_);
      if (items_.empty()) return;
      next = items_.front();
      items_.pop_front();
    }
    try {
      next->reply.set_value(next->work(coordinator));
    } catch (const std::exception& e) {
      // Work that throws failed the job (a checkpoint that cannot be written, a holder that
      // is gone): the requester learns why, and the step loop stops as after a failed step.
      next->reply.set_value(control_error(500, e.what()));
      throw;
    }
  }
}

void job_control::wait_for_work(std::chrono::milliseconds limit) {
  std::unique_lock lock(mutex_);
  queued_.wait_for(lock, limit, [&] { return !items_.empty() || !closed_.empty(); });
}

void job_control::close(const std::string& why) {
  std::deque<std::shared_ptr<item>> left;
  {
    std::lock_guard lock(mutex_);
    closed_ = why.empty() ? std::string("the job ended") : why;
    left.swap(items_);
  }
  for (auto& entry : left) entry->reply.set_value(control_error(503, closed_));
  queued_.notify_all();
}

void job_control::set_status(nlohmann::json status) {
  std::lock_guard lock(mutex_);
  status_ = std::move(status);
}

nlohmann::json job_control::status() const {
  std::lock_guard lock(mutex_);
  return status_;
}

}  // namespace troupe
