#pragma once

// The plugins of one process of a job, as hot swaps see them. A swap reaches every
// holder of the job (pipeline ranks, expert shards), in this process or another; the holders of
// one process share what the swap needs once per process:
//   - the new library, loaded once per swap (a fresh copy: a rebuilt file under the same path is
//     new code), so every instance of the process runs the same generation;
//   - for GEMM swaps, the process's one provider: built once at prepare, put into the process's
//     exec context once at commit, dropped at abort.
// Holders call it from their own threads, at a step boundary; it locks.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "runtime/exec/exec_context.hpp"
#include "runtime/plugin/instance.hpp"
#include "runtime/plugin/registry.hpp"
#include "runtime/topology/topology.hpp"

namespace troupe {

/// A swap as it travels to every holder: the role, the library (empty: the runtime's built-in
/// GEMM), the swap's number in the job (the same path swapped twice loads twice) and, for the
/// built-in GEMM, its precision: fp32 (BLAS on the host, cuBLASLt FP32 on a GPU) or bf16
/// (cuBLASLt BF16, on GPUs only). The process's context gets its default provider either way; a
/// pipeline rank on a GPU switches its own context to the precision (pipeline_rank.hpp).
struct plugin_swap_order {
  plugin_kind kind = plugin_kind::moe;
  std::string library;
  std::int64_t swap = 0;
  precision builtin = precision::fp32;
  auto fields() { return std::tie(kind, library, swap, builtin); }
};

class process_plugins {
 public:
  /// `gemm`: the GEMM plugin instance the context uses now (null: the built-in, the context's
  /// default provider).
  process_plugins(plugin_registry& registry, exec_context& context,
                  std::unique_ptr<gemm_instance> gemm);

  /// The library of `order` in this process (null for the built-in GEMM); throws
  /// plugin_load_error naming the file and the cause.
  std::shared_ptr<const plugin_library> library_for(const plugin_swap_order& order);

  /// GEMM swaps: 1 when this call built the process's new provider, 0 when another holder of
  /// the process did already. Throws when it cannot be built.
  std::int64_t prepare_gemm(const plugin_swap_order& order);
  /// Puts the prepared provider in place (the first call of the swap does; the others find it
  /// done). Every actor of the process is between steps.
  void commit_gemm(std::int64_t swap);
  void abort_gemm(std::int64_t swap);

 private:
  std::mutex mutex_;
  plugin_registry& registry_;
  exec_context& context_;
  std::unique_ptr<gemm_instance> gemm_;
  std::map<std::int64_t, std::shared_ptr<const plugin_library>> loaded_;  // by swap
  std::int64_t prepared_swap_ = 0;
  std::unique_ptr<gemm_instance> prepared_gemm_;  // null with prepared_swap_: the built-in
};

}  // namespace troupe
