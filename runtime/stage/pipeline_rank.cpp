#include "runtime/stage/pipeline_rank.hpp"

#include "runtime/exec/blas_gemm.hpp"
#include "runtime/exec/cuda_gemm.hpp"

#include <cmath>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/core/error.hpp"

namespace troupe {

std::vector<instance_slot> pipeline_rank::plugin_slots(plugin_kind kind) {
  std::vector<instance_slot> slots;
  for (auto& chunk : chunks_)
    for (instance_slot slot : chunk.runner->plugin_slots(kind)) slots.push_back(slot);
  return slots;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

namespace {

/// A context on the GPU the chunks live on, or null when they are on the host.
std::unique_ptr<exec_context> gpu_context_for(const std::vector<stage_chunk>& chunks,
                                              const exec_context& host) {
  if (chunks.empty()) return nullptr;
  const device where = chunks.front().runner->parameters().where();
  for (const stage_chunk& c : chunks)
    if (c.runner->parameters().where() != where)
      fail("the chunks of a pipeline rank must live on one device ({} and {})", to_string(where),
           to_string(c.runner->parameters().where()));
  if (where.is_cpu()) return nullptr;
  return std::make_unique<exec_context>(where, host.pool());
}

tensor on_host(const tensor& t) {
  return t.where().is_cpu() ? t : t.to(device::cpu());
}

}  // namespace

pipeline_rank::pipeline_rank(std::int32_t rank, std::vector<stage_chunk> chunks,
                             const exec_context& context, precision builtin_gemm)
    : rank_(rank),
      chunks_(std::move(chunks)),
      host_context_(context),
      gpu_context_(gpu_context_for(chunks_, context)),
      context_(gpu_context_ ? *gpu_context_ : context),
      builtin_gemm_(builtin_gemm) {
  if (gpu_context_) snapshots_ = std::make_unique<async_snapshot>(context_.where().index);
  follow_gemm_provider();
}

void pipeline_rank::check_builtin_gemm(precision p) const {
  if (p != precision::fp32 && p != precision::bf16)
    fail("pipeline rank {}: the runtime's built-in GEMM computes in fp32 or bf16, not {}", rank_,
         p == precision::fp8 ? std::string("fp8")
                             : fmt::format("precision #{}", static_cast<int>(p)));
  if (p == precision::bf16 && !gpu_context_)
    fail(
        "pipeline rank {} computes on the CPU, which has no BF16 GEMM: the built-in bf16 GEMM "
        "runs on GPU stages only",
        rank_);
}

void pipeline_rank::use_builtin_gemm(precision p) {
  check_builtin_gemm(p);
  builtin_gemm_ = p;
  follow_gemm_provider();
}

std::vector<std::pair<std::string, tensor>> pipeline_rank::snapshot_values(
    const std::set<std::string>& owned) const {
  std::vector<std::pair<std::string, tensor>> values;
  std::set<std::string> taken;
  for (const auto& c : chunks_)
    for (parameter* p : c.runner->parameters().all())
      if (owned.count(p->name) && p->spec.trainable() && taken.insert(p->name).second)
        values.emplace_back(p->name, p->value);
  return values;
}

void pipeline_rank::prepare_snapshots(const std::set<std::string>& owned) {
  if (!snapshots_) fail("pipeline rank {}: snapshots are synchronous on the host", rank_);
  snapshots_->prepare(snapshot_values(owned));
}

void pipeline_rank::start_snapshot(const std::set<std::string>& owned) {
  if (!snapshots_) fail("pipeline rank {}: snapshots are synchronous on the host", rank_);
  snapshots_->start(snapshot_values(owned), context_.stream());
}

std::optional<std::vector<std::pair<std::string, tensor>>> pipeline_rank::take_snapshot(bool wait) {
  if (!snapshots_ || !snapshots_->pending() || (!wait && !snapshots_->ready())) return std::nullopt;
  return snapshots_->take();
}

void pipeline_rank::follow_gemm_provider() {
  if (!gpu_context_) return;
  // A plugin's provider (FP8) serves both devices; the host's BLAS default gives way to
  // cuBLASLt in the built-in's precision (null: the GPU context's default, FP32).
  const troupe_gemm_provider* host = host_context_.gemm_provider();
  const troupe_gemm_provider* builtin =
      builtin_gemm_ == precision::bf16 ? cuda_bf16_gemm_provider() : nullptr;
  gpu_context_->set_gemm_provider(host == blas_gemm_provider() ? builtin : host);
}

stage_chunk& pipeline_rank::chunk(std::int32_t stage, std::int32_t copy) {
  for (auto& c : chunks_)
    if (c.stage == stage && c.copy == copy) return c;
  fail("pipeline rank {} holds no copy {} of stage {}", rank_, copy, stage);
}

void pipeline_rank::begin_step(std::shared_ptr<const schedule_plan> plan,
                               std::vector<micro_batch_input> inputs, float loss_scale,
                               bool forward_only) {
  if (plan_ != nullptr && !finished())
    fail("pipeline rank {}: a step began before the last one finished", rank_);
  plan_ = std::move(plan);
  inputs_ = std::move(inputs);
  loss_scale_ = loss_scale;
  forward_only_ = forward_only;
  next_op_ = 0;
  report_ = {};
}

void pipeline_rank::deliver(stage_transfer transfer) {
  arrived_[{transfer.gradient, transfer.stage, transfer.copy, transfer.micro_batch}] =
      std::move(transfer.value);
}

bool pipeline_rank::ready_forward(const stage_work& w) const {
  return w.stage == 0 || arrived_.count({false, w.stage, w.copy, w.micro_batch}) != 0;
}

bool pipeline_rank::ready_backward(const stage_work& w) const {
  return w.stage == plan_->stages() - 1 || arrived_.count({true, w.stage, w.copy, w.micro_batch});
}

bool pipeline_rank::ready(const pipeline_op& op) const {
  if (forward_only_)
    return op.kind == op_kind::forward || op.kind == op_kind::forward_backward
               ? ready_forward(op.work)
               : true;  // skipped
  switch (op.kind) {
    case op_kind::forward:
      return ready_forward(op.work);
    case op_kind::backward:
    case op_kind::backward_input:
      return ready_backward(op.work);
    case op_kind::backward_weight:
      return true;
    case op_kind::forward_backward:
      return ready_forward(op.work) && ready_backward(op.backward_work);
  }
  return false;
}

std::vector<std::pair<std::int32_t, stage_transfer>> pipeline_rank::advance() {
  std::vector<std::pair<std::int32_t, stage_transfer>> out;
  if (plan_ == nullptr) return out;
  const auto& ops = plan_->ops(rank_);
  while (next_op_ < ops.size() && ready(ops[next_op_])) {
    const pipeline_op& op = ops[next_op_];
    const auto start = std::chrono::steady_clock::now();
    if (forward_only_) {
      if (op.kind == op_kind::forward || op.kind == op_kind::forward_backward)
        run_forward(op.work, out);
      report_.busy_seconds += seconds_since(start);
      ++next_op_;
      continue;
    }
    switch (op.kind) {
      case op_kind::forward:
        run_forward(op.work, out);
        break;
      case op_kind::backward:
        run_backward(op.work, TROUPE_BACKWARD_BOTH, out);
        break;
      case op_kind::backward_input:
        run_backward(op.work, TROUPE_BACKWARD_INPUT, out);
        break;
      case op_kind::backward_weight:
        run_backward(op.work, TROUPE_BACKWARD_WEIGHT, out);
        break;
      case op_kind::forward_backward:
        // On the CPU the pair runs one after the other; on GPUs the backward's communication
        // would overlap the forward's compute.
        run_forward(op.work, out);
        run_backward(op.backward_work, TROUPE_BACKWARD_BOTH, out);
        break;
    }
    report_.busy_seconds += seconds_since(start);
    ++next_op_;
  }
  return out;
}

void pipeline_rank::run_forward(const stage_work& w,
                                std::vector<std::pair<std::int32_t, stage_transfer>>& out) {
  stage_chunk& c = chunk(w.stage, w.copy);
  const micro_batch_input& input = inputs_.at(static_cast<std::size_t>(w.micro_batch));
  model_batch batch;
  batch.tokens = input.tokens;
  const bool head = w.stage == plan_->stages() - 1;
  if (head) batch.targets = input.targets;
  if (w.stage > 0) {
    auto it = arrived_.find({false, w.stage, w.copy, w.micro_batch});
    batch.hidden = std::move(it->second);
    arrived_.erase(it);
  }
  follow_gemm_provider();
  model_output output = c.runner->forward(context_, w.micro_batch, batch, false, !forward_only_);
  micro_batch_losses losses;
  losses.micro_batch = w.micro_batch;
  losses.head = head;
  losses.loss = output.loss;
  losses.mtp_loss = output.mtp_loss;
  losses.balance_loss = output.balance_loss;
  losses.non_finite = output.non_finite;
  report_.losses.push_back(std::move(losses));
  for (std::size_t i = 0; i < output.moe_layers.size(); ++i) {
    const tensor& counts = output.expert_counts[i];
    auto& total = report_.load[output.moe_layers[i]];
    total.resize(static_cast<std::size_t>(counts.numel()), 0);
    for (std::int64_t e = 0; e < counts.numel(); ++e)
      total[static_cast<std::size_t>(e)] += counts.data_as<const std::int64_t>()[e];
  }
  if (forward_only_) c.runner->forget(w.micro_batch);
  if (!head)
    out.emplace_back(plan_->rank_of_copy(w.stage + 1, w.copy),
                     stage_transfer{false, w.stage + 1, w.copy, w.micro_batch, output.hidden});
}

void pipeline_rank::run_backward(const stage_work& w, troupe_backward_part part,
                                 std::vector<std::pair<std::int32_t, stage_transfer>>& out) {
  stage_chunk& c = chunk(w.stage, w.copy);
  tensor d_hidden;
  if (part != TROUPE_BACKWARD_WEIGHT && w.stage < plan_->stages() - 1) {
    auto it = arrived_.find({true, w.stage, w.copy, w.micro_batch});
    d_hidden = std::move(it->second);
    arrived_.erase(it);
  }
  follow_gemm_provider();
  tensor d_input = c.runner->backward(context_, w.micro_batch, d_hidden, loss_scale_, part);
  if (part != TROUPE_BACKWARD_WEIGHT && w.stage > 0)
    out.emplace_back(plan_->rank_of_copy(w.stage - 1, w.copy),
                     stage_transfer{true, w.stage - 1, w.copy, w.micro_batch, d_input});
}

rank_step_report pipeline_rank::take_report() {
  for (auto& c : chunks_)
    if (c.experts) {
      const auto counts = c.experts->take_routing_counts();
      report_.tokens_across_hosts += counts.tokens_across_hosts;
      report_.most_hosts_per_token =
          std::max(report_.most_hosts_per_token, counts.most_hosts_per_token);
    }
  return std::move(report_);
}

gradient_summary pipeline_rank::summarize_gradients(const std::set<std::string>& replicated) {
  const context_stream_scope on_stream(context_);
  gradient_summary summary;
  for (auto& c : chunks_)
    add_gradients(c.runner->parameters().all(), replicated, summary, gpu_context_.get());
  return summary;
}

std::vector<std::pair<std::string, tensor>> pipeline_rank::gradients_of(
    const std::set<std::string>& replicated) {
  std::vector<std::pair<std::string, tensor>> grads;
  for (auto& c : chunks_)
    for (parameter* p : c.runner->parameters().all())
      if (p->spec.trainable() && replicated.count(p->name)) grads.emplace_back(p->name, p->grad);
  return grads;
}

void pipeline_rank::optimize(double lr, double grad_scale, std::int64_t step) {
  const context_stream_scope on_stream(context_);
  // The last snapshot's copy must have read the values before AdamW writes them (on the GPU).
  if (snapshots_) snapshots_->before_update(context_.stream());
  for (auto& c : chunks_) {
    c.optimizer->step(lr, grad_scale, step, context_);
    // On a GPU the gradients the layers overwrite stay as they are (the routed experts').
    c.runner->parameters().zero_grads(&context_.pool(), gpu_context_ != nullptr);
  }
  // Every chunk's gradients are zeros now, or (on a GPU: the context this rank owns) overwritten
  // by their layers' next backward (the moe plugin's expert Wgrad).
  if (gpu_context_) gpu_context_->gradients_zeroed();
}

void pipeline_rank::set_expert_placement(
    const std::map<std::int64_t, std::vector<std::vector<std::int64_t>>>& layers) {
  for (auto& c : chunks_)
    if (c.experts) c.experts->set_placement(layers);
}

void pipeline_rank::set_router_biases(const std::map<std::int64_t, std::vector<float>>& biases) {
  for (auto& c : chunks_)
    for (parameter* p : c.runner->parameters().all()) {
      if (!p->spec.router_bias()) continue;
      auto it = biases.find(p->layer);
      if (it == biases.end()) continue;
      if (p->value.numel() != static_cast<std::int64_t>(it->second.size()))
        fail("router biases of layer {}: {} values for {}", p->layer, it->second.size(),
             p->value.describe());
      if (p->value.where().is_cpu()) {
        std::copy(it->second.begin(), it->second.end(), p->value.data_as<float>());
      } else {
        const context_stream_scope on_stream(context_);
        tensor host = tensor::empty(dtype::f32, p->value.shape());
        std::copy(it->second.begin(), it->second.end(), host.data_as<float>());
        p->value.copy_from(host);
      }
    }
}

std::map<std::int64_t, std::string> pipeline_rank::router_bias_names() const {
  std::map<std::int64_t, std::string> names;
  for (const auto& c : chunks_)
    for (const parameter* p : c.runner->parameters().all())
      if (p->spec.router_bias()) names.emplace(p->layer, p->name);
  return names;
}

std::vector<std::pair<std::string, tensor>> pipeline_rank::checkpoint_tensors(
    const std::set<std::string>& owned) const {
  // A rank holding two copies of a stage (DualPipe) writes each name once.
  std::vector<std::pair<std::string, tensor>> tensors;
  std::set<std::string> written;
  for (const auto& c : chunks_)
    for (auto& [name, value] : c.runner->checkpoint_tensors())
      if (owned.count(name) && written.insert(name).second)
        tensors.emplace_back(name, on_host(value));
  return tensors;
}

std::vector<std::pair<std::string, tensor>> pipeline_rank::copies_of(
    const std::set<std::string>& owned, bool trainable) const {
  std::vector<std::pair<std::string, tensor>> copies;
  std::set<std::string> taken;
  for (const auto& c : chunks_)
    for (parameter* p : c.runner->parameters().all())
      if (owned.count(p->name) && p->spec.trainable() == trainable && taken.insert(p->name).second)
        copies.emplace_back(p->name,
                            p->value.where().is_cpu() ? p->value.clone() : on_host(p->value));
  return copies;
}

std::vector<std::pair<std::string, tensor>> pipeline_rank::optimizer_state(
    const std::set<std::string>& owned) const {
  std::vector<std::pair<std::string, tensor>> moments;
  std::set<std::string> taken;
  for (const auto& c : chunks_)
    for (auto& [name, value] : c.optimizer->state()) {
      const std::string parameter_name = name.substr(0, name.rfind(".exp_avg"));
      if ((owned.count(parameter_name) || c.optimizer->keeps_range(parameter_name)) &&
          taken.insert(name).second)
        moments.emplace_back(name, on_host(value));
    }
  return moments;
}

void pipeline_rank::load(const hf_checkpoint& weights,
                         const std::vector<std::pair<std::string, tensor>>& moments) {
  const context_stream_scope on_stream(context_);
  for (auto& c : chunks_) {
    load_parameters(weights, c.runner->parameters(), &context_.pool());
    c.optimizer->load_state(moments);
  }
}

void pipeline_rank::keep_ranges(const zero_sharding& sharding) {
  for (std::size_t c = 0; c < chunks_.size(); ++c)
    if (chunks_[c].optimizer)
      chunks_[c].optimizer->keep_ranges(sharding.ranges_of(static_cast<std::int32_t>(c)));
}

tensor pipeline_rank::tensor_of(std::int32_t chunk, const std::string& name, bool gradient) {
  if (chunk < 0 || static_cast<std::size_t>(chunk) >= chunks_.size())
    fail("rank {} has no chunk {}", rank_, chunk);
  parameter& p = chunks_[static_cast<std::size_t>(chunk)].runner->parameters().at(name);
  return gradient ? p.grad : p.value;
}

std::int64_t pipeline_rank::optimizer_bytes() const {
  std::int64_t n = 0;
  for (const auto& c : chunks_)
    if (c.optimizer) n += c.optimizer->state_bytes();
  return n;
}

}  // namespace troupe
