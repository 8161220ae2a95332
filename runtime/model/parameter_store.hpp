#pragma once

// The parameters of a model (or of the slice of it a pipeline stage holds), owned by the runtime:
// one f32 tensor per parameter and one for its gradient, under its checkpoint name
// ("model.layers.3.self_attn.kv_b_proj.weight"). Plugins declare theirs; core layers add theirs.

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "runtime/plugin/instance.hpp"
#include "runtime/tensor/tensor.hpp"

namespace troupe {

class thread_pool;

struct parameter {
  std::string name;
  parameter_spec spec;
  tensor value;
  tensor grad;              ///< undefined for buffers (not optimised)
  std::int64_t layer = -1;  ///< the model layer a plugin declared it for; -1: a core layer's
};

class parameter_store {
 public:
  /// A store whose values and gradients live on `where`.
  explicit parameter_store(device where = device::cpu()) : where_(where) {}
  device where() const { return where_; }

  /// Allocates a parameter (zeros) and its gradient. Throws troupe::error on a duplicate name.
  parameter& add(const std::string& name, const parameter_spec& spec);

  parameter* find(const std::string& name);
  const parameter* find(const std::string& name) const;
  parameter& at(const std::string& name);

  /// In declaration order.
  const std::vector<parameter*>& all() const { return order_; }
  std::int64_t element_count() const;

  /// Fills every parameter from its spec's initialisation with a counter-based generator keyed
  /// by (seed, name) (counter_random.hpp): the result does not depend on which parameters a
  /// process holds or in which order, on the device (values are drawn on the host and copied),
  /// nor on the threads of `pool` that draw them (when given; else the calling thread).
  void initialize(std::uint64_t seed, thread_pool* pool = nullptr);

  /// Zeros every gradient: on the host in 1 MiB pieces over `pool` when one is given (one thread
  /// zeroing the small-512 model's 0.9 GB of gradients takes tens of milliseconds); on a GPU in one
  /// launch over a table of the gradients' memory (one cudaMemsetAsync per gradient cost about
  /// 3 us each, thousands of them per step), then waits for the stream. `leave_overwritten`: not
  /// the gradients their layers overwrite (TROUPE_PARAM_GRAD_OVERWRITTEN), for a caller that moves
  /// its context's gradient_generation next (exec_context::gradients_zeroed).
  void zero_grads(thread_pool* pool = nullptr, bool leave_overwritten = false);

  /// (name, value) pairs for writing a checkpoint.
  std::vector<std::pair<std::string, tensor>> named_values() const;

 private:
  device where_;
  std::map<std::string, parameter> parameters_;
  std::vector<std::pair<void*, std::uint64_t>> grad_spans_;  ///< GPU: the table's pieces
  tensor grad_span_table_;  ///< u8 on the device: grad_spans_ as kernels/cuda zero_span
  std::vector<parameter*> order_;
};

/// The plugin tensors of `names` from `store`, in order (params and grads), for
/// layer_instance::bind.
std::pair<std::vector<tensor>, std::vector<tensor>> bound_tensors(
    parameter_store& store, const std::vector<std::string>& names);

}  // namespace troupe
