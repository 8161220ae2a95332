#pragma once

// ZeRO-1 over NCCL (runtime/optim/nccl_zero_one.hpp) against plain AdamW, for the GPU suite (one
// replica) and the multigpu suite's peers (one replica per process): every replica holds the same
// parameters (awkward sizes, a matrix that decays and vectors that do not, a buffer) and its own
// gradients, drawn from the replica's index; the reference sums every replica's gradients on the
// host in replica order and steps plain AdamW on them (on the same GPU). Three steps with small
// buckets (several per step); the values must agree to 1e-6 relative (NCCL may add the replicas
// in another order), the squared norm too, and the moments kept must be the replica's slices only.
// A frozen parameter (neither trainable nor a buffer) has a large gradient that must not count,
// and a parameter of 1.2 M elements is cut across buckets (small ones) or moved in several spans
// of 4 MiB (large ones). The moments written for a checkpoint load back.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "runtime/exec/exec_context.hpp"
#include "runtime/exec/thread_pool.hpp"
#include "runtime/model/parameter_store.hpp"
#include "runtime/optim/adamw.hpp"
#include "runtime/optim/nccl_zero_one.hpp"

namespace troupe::testing {

inline void zero_one_parameters(parameter_store& store) {
  auto trainable = [](std::vector<std::int64_t> shape) {
    return parameter_spec{"",    std::move(shape),      dtype::f32, TROUPE_INIT_NORMAL,
                          0.02f, TROUPE_PARAM_TRAINABLE};
  };
  store.add("embed", trainable({67, 129}));
  store.add("norm", trainable({1000}));
  store.add("tiny", trainable({3}));
  store.add("buffer", {"", {5}, dtype::f32, TROUPE_INIT_ZEROS, 0.0f, TROUPE_PARAM_BUFFER});
  store.add("proj", trainable({300, 17}));
  store.add("frozen", {"", {50}, dtype::f32, TROUPE_INIT_NORMAL, 0.02f, 0});
  store.add("large", trainable({1200, 1000}));
  store.initialize(11);
}

/// Replica `replica`'s gradient element i of parameter number `p`, at step `step`.
inline float zero_one_gradient(int replica, int p, std::int64_t i, int step) {
  const auto x =
      static_cast<double>((i * 7919 + p * 104729 + replica * 1299709 + step * 15485863) % 2000003);
  return static_cast<float>((x / 2000003.0 - 0.5) * 0.01 * (1 + replica));
}

/// Sets `store`'s gradients: replica `replica`'s own, or (replica < 0) the sum over `replicas`.
inline void zero_one_gradients(parameter_store& store, int replica, int replicas, int step) {
  int p = 0;
  for (parameter* param : store.all()) {
    if (!param->grad.defined()) continue;
    tensor host = tensor::empty(dtype::f32, param->grad.shape());
    if (!param->spec.trainable()) {  // frozen: a gradient nobody may use
      std::fill(host.data_as<float>(), host.data_as<float>() + host.numel(), 1e3f);
      param->grad.copy_from(host);
      continue;
    }
    for (std::int64_t i = 0; i < host.numel(); ++i) {
      float sum = 0.0f;
      for (int q = replica < 0 ? 0 : replica; q < (replica < 0 ? replicas : replica + 1); ++q)
        sum += zero_one_gradient(q, p, i, step);
      host.data_as<float>()[i] = sum;
    }
    param->grad.copy_from(host);
    ++p;
  }
}

/// Runs the scenario as replica `comm.rank()` on cuda:`ordinal`; "" when everything agrees, else
/// what did not.
inline std::string run_zero_one_scenario(nccl_communicator& comm, int ordinal,
                                         std::int64_t bucket_elements) {
  const device gpu = device::cuda(ordinal);
  thread_pool pool(1);
  exec_context context(gpu, pool);
  const context_stream_scope on_stream(context);
  const adamw_settings settings{0.9, 0.95, 1e-8, 0.1};
  parameter_store sharded(gpu), plain(gpu);
  zero_one_parameters(sharded);
  zero_one_parameters(plain);
  adamw zero_optimizer(settings), plain_optimizer(settings);
  zero_optimizer.attach(sharded);
  plain_optimizer.attach(plain);
  const std::int64_t whole_bytes = zero_optimizer.state_bytes();
  nccl_zero_one zero(comm, ordinal, sharded, zero_optimizer, bucket_elements);
  std::string problems;
  const int ranks = comm.ranks(), rank = comm.rank();
  std::int64_t longest = 0;  // every trainable parameter's slice 0, in buckets that fill up
  for (const parameter* p : sharded.all())
    if (p->spec.trainable()) longest += zero_slice(p->value.numel(), 0, ranks).size();
  const auto buckets = static_cast<std::size_t>((longest + bucket_elements - 1) / bucket_elements);
  if (zero.buckets() != buckets)
    problems += fmt::format("{} buckets of {} elements, expected {}\n", zero.buckets(),
                            bucket_elements, buckets);
  const std::int64_t kept = zero_optimizer.state_bytes();
  std::int64_t expected_kept = 0;
  for (const parameter* p : sharded.all())
    if (p->spec.trainable()) expected_kept += zero_slice(p->value.numel(), rank, ranks).size() * 4;
  if (kept != expected_kept)
    problems += fmt::format("moments of {} bytes kept, the slices need {} (all: {})\n", kept,
                            expected_kept, whole_bytes);
  for (int step = 1; step <= 3; ++step) {
    zero_one_gradients(sharded, rank, ranks, step);
    zero_one_gradients(plain, -1, ranks, step);
    const double norm2 = zero.reduce_gradients();
    double reference = 0.0;
    for (const parameter* p : plain.all()) {
      if (!p->spec.trainable()) continue;
      const tensor g = p->grad.to(device::cpu());
      for (std::int64_t i = 0; i < g.numel(); ++i) {
        const double x = g.data_as<const float>()[i];
        reference += x * x;
      }
    }
    if (std::abs(norm2 - reference) > 1e-6 * reference)
      problems += fmt::format("step {}: squared norm {} against {}\n", step, norm2, reference);
    const double scale = std::min(1.0, 1.0 / (std::sqrt(reference) + 1e-6));  // clip at 1
    zero_optimizer.step(1e-2, scale, step, context);
    zero.gather_values();
    plain_optimizer.step(1e-2, scale, step, context);
    double worst = 0.0;
    for (const parameter* p : plain.all()) {
      const tensor want = p->value.to(device::cpu());
      const tensor got = sharded.at(p->name).value.to(device::cpu());
      for (std::int64_t i = 0; i < want.numel(); ++i) {
        const double a = got.data_as<const float>()[i], b = want.data_as<const float>()[i];
        worst = std::max(worst, std::abs(a - b) / std::max(1e-3, std::abs(b)));
      }
    }
    if (worst > 1e-6)
      problems +=
          fmt::format("step {}: values differ from plain AdamW by {:.3g} relative\n", step, worst);
  }
  // The checkpoint's moments: pieces "<name>.exp_avg[BEGIN:END]" of this replica's slices, which
  // an optimizer keeping the same slices reads back to the same bits; with one replica, the
  // plain optimizer's moments exactly (the same gradients reached both).
  const auto saved = zero_optimizer.state();
  parameter_store again(gpu);
  zero_one_parameters(again);
  adamw reloaded(settings);
  reloaded.attach(again);
  reloaded.keep_ranges(zero.ranges());
  reloaded.load_state(saved);
  auto same = [](const std::vector<std::pair<std::string, tensor>>& a,
                 const std::vector<std::pair<std::string, tensor>>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
      const tensor x = a[i].second.to(device::cpu()), y = b[i].second.to(device::cpu());
      if (a[i].first != b[i].first || x.nbytes() != y.nbytes() ||
          std::memcmp(x.data(), y.data(), x.nbytes()) != 0)
        return false;
    }
    return true;
  };
  if (!same(reloaded.state(), saved)) problems += "the saved moments load back differently\n";
  if (ranks == 1) {
    adamw whole(settings);
    whole.attach(again);
    whole.load_state(saved);
    if (!same(whole.state(), plain_optimizer.state()))
      problems += "the moments differ from plain AdamW's\n";
  }
  return problems;
}

}  // namespace troupe::testing
