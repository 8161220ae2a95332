#pragma once

// A plugin swap of one process's serving instances, in two halves so that a server swaps in
// every one of its processes or in none (serving_control.hpp asks the decode processes through
// their decode actors, remote_decode.hpp):
//   prepare  loads the library (a fresh copy for each instance) and, while the instances' steps
//            are held (request_engine::hold_steps), builds every successor: the layers' plugin
//            instances and, for a moe swap with expert shards, the shards rebuilt on the new
//            plugin with their weights. Nothing is in place yet; the steps go on.
//   commit   puts them in place while the steps are held again; abort drops them.
// The successors import the old instances' state at prepare; the plugins keep none a sequence
// depends on (its KV cache is the runtime's), so steps between the halves change nothing.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/device/device.hpp"
#include "runtime/model/decoder_layer.hpp"
#include "runtime/plugin/kind.hpp"
#include "runtime/serve/request_engine.hpp"

namespace troupe {

struct plugin_library;
class model_runner;
class plugin_registry;
class replicated_experts;

/// One serving instance of this process, as the commands reach it: only while the engine's steps
/// are held.
struct controlled_instance {
  std::string engine;                     ///< "serve", "prefill0", "decode1", ...
  model_runner* runner = nullptr;         ///< its plugin instances
  plugin_registry* registry = nullptr;    ///< where a swapped library is loaded for it
  model_plugins* plugins = nullptr;       ///< the libraries it runs (updated by swaps)
  replicated_experts* experts = nullptr;  ///< its expert shards; null without
  device where = device::cpu();
};

/// A swap of a role this server does not run (a model without it, MTP without --speculative).
class nothing_to_swap : public error {
 public:
  using error::error;
};

class serving_swap {
 public:
  serving_swap(request_engine& engine, std::vector<controlled_instance> instances);
  ~serving_swap();
  serving_swap(const serving_swap&) = delete;
  serving_swap& operator=(const serving_swap&) = delete;

  /// Prepares `role`'s swap for `library` (dropping one prepared before); returns the plugin
  /// instances it will replace. Throws troupe::error when the library does not load (the probe's
  /// cause), is of another kind, is an attention plugin without a cached forward, or no instance
  /// runs the role; engine_stopping when the server stops first. Nothing changes then.
  std::int64_t prepare(plugin_kind role, const std::string& library);
  /// Puts what prepare built in place; returns the seconds the steps were held. Throws
  /// troupe::error without a prepared swap, engine_stopping when the server stops first.
  double commit();
  /// Drops what prepare built.
  void abort();

  /// The library instance 0 runs for `role` (null: none).
  std::shared_ptr<const plugin_library> running(plugin_kind role) const;

 private:
  struct successors;
  request_engine& engine_;
  std::vector<controlled_instance> instances_;
  mutable std::mutex mutex_;  ///< the instances' libraries (running() reads them) and prepared_
  std::unique_ptr<successors> prepared_;
};

}  // namespace troupe
