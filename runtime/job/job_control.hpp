#pragma once

// Requests from the control endpoint (its threads) to a job's step loop (the coordinator's
// thread). Work that changes the job (pause, checkpoint, swap) runs on the
// coordinator at a step boundary, when no micro-batch is in flight; the requesting thread waits
// for its reply. The status is a snapshot the coordinator refreshes, readable at any time.

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/control/control_server.hpp"

namespace troupe {

class blocking_actor;

/// Work for the coordinator at a step boundary.
using boundary_work = std::function<control_reply(blocking_actor& coordinator)>;

class job_control {
 public:
  /// Control threads: queues `work` for the next step boundary and waits up to `timeout` for its
  /// reply (503 when the job ends first or the wait runs out; the work is then dropped if it has
  /// not started).
  control_reply at_step_boundary(boundary_work work, std::chrono::milliseconds timeout);

  /// Coordinator: runs the work queued now, in order. Work that throws is answered with 500
  /// and the exception goes on to the caller (it fails the job).
  void run_queued(blocking_actor& coordinator);
  /// Coordinator: waits until work is queued or `limit` passes.
  void wait_for_work(std::chrono::milliseconds limit);
  /// Answers queued and later work with 503 `why` (the job ended).
  void close(const std::string& why);

  void set_status(nlohmann::json status);
  nlohmann::json status() const;

 private:
  struct item {
    boundary_work work;
    std::promise<control_reply> reply;
  };
  mutable std::mutex mutex_;
  std::condition_variable queued_;
  std::deque<std::shared_ptr<item>> items_;
  std::string closed_;  // why, once closed
  nlohmann::json status_ = nlohmann::json::object();
};

}  // namespace troupe
