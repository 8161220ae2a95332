#pragma once

// A server's control endpoint (`troupe ctl SERVER ...`, docs/control.md): the commands of
// control_server for `troupe serve`, as training_control is for a training job.
//   status     the server's state, its instances and decode processes, plugins, swaps, rebalances
//   swap       a plugin (attention, moe, mtp) of every instance of the server, in this process
//              and its decode processes, all or none (serving_swap.hpp: each prepares while its
//              steps are held, then all commit): no request is dropped, the running ones go on
//              with the new plugin from their next step
//   rebalance  each instance's expert shards re-placed now, from the load they saw since their
//              last re-placement or from a given load (with [serve] expert_shards)
// One command runs at a time; status never waits for one.

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/control/control_server.hpp"
#include "runtime/device/device.hpp"
#include "runtime/model/decoder_layer.hpp"
#include "runtime/plugin/kind.hpp"
#include "runtime/serve/request_engine.hpp"
#include "runtime/serve/serving_rebalance.hpp"
#include "runtime/serve/serving_swap.hpp"

namespace troupe {

/// The decode and expert processes found lost: the cluster's failure handler adds them (from the
/// moment the processes meet), status reads them.
class lost_decode_processes {
 public:
  void add(int rank, const std::string& why) {
    std::lock_guard lock(mutex_);
    lost_.emplace(rank, why);
  }
  std::map<int, std::string> ranks() const {
    std::lock_guard lock(mutex_);
    return lost_;
  }
  /// The server stops: the other processes leave, and their connections closing is no loss.
  void set_leaving() { leaving_ = true; }
  bool leaving() const { return leaving_; }

 private:
  mutable std::mutex mutex_;
  std::map<int, std::string> lost_;
  std::atomic<bool> leaving_{false};
};

struct serving_control_options {
  std::string job;                        ///< the name `troupe ctl` knows the server by
  std::string model;                      ///< the served model's name
  std::string url;                        ///< the OpenAI endpoint
  std::string topology;                   ///< empty: none
  std::vector<std::string> decode_hosts;  ///< decode processes' hosts (rank i + 1: the i-th)
  std::vector<std::string> expert_hosts;  ///< expert processes' hosts (after the decode ranks)
  std::shared_ptr<const lost_decode_processes> lost;  ///< null without decode processes
  std::int64_t experts = 0;                           ///< routed experts per MoE layer
  /// The decode processes' decode actors (rank r + 1: index r) and the runtime to ask them
  /// through: a swap reaches their instances too.
  actor_runtime* runtime = nullptr;
  std::vector<actor_ref> decode_actors;
};

class serving_control {
 public:
  serving_control(request_engine& engine, std::vector<controlled_instance> instances,
                  serving_control_options options);

  /// What control_server serves: status, swap, rebalance.
  std::map<std::string, control_command> commands();

  /// The server is draining (SIGTERM): status says so, commands are refused (503).
  void set_draining();

 private:
  control_reply status() const;
  /// The decode processes (their index in decode_actors) not found lost.
  std::vector<std::size_t> live_decode_processes() const;
  /// How failures name decode process `r`: "decode process rank R (HOST)".
  std::string decode_process(std::size_t r) const;
  control_reply swap(const nlohmann::json& request);
  control_reply rebalance(const nlohmann::json& request);
  /// A refused or failed swap: recorded, then the error.
  control_reply swap_failed(plugin_kind role, const std::string& library, int status,
                            const std::string& why);

  request_engine& engine_;
  std::vector<controlled_instance> instances_;
  serving_control_options options_;
  serving_swap swap_;            ///< this process's instances
  serving_rebalance rebalance_;  ///< the same
  std::mutex command_;           ///< one swap or rebalance at a time
  mutable std::mutex state_;     ///< what status reads
  bool draining_ = false;
  nlohmann::json swaps_ = nlohmann::json::array();
  nlohmann::json rebalances_ = nlohmann::json::array();
};

}  // namespace troupe
