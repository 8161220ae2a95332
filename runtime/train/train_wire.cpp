#include "runtime/train/train_wire.hpp"

#include "runtime/actor/atoms.hpp"
#include "runtime/train/train_messages.hpp"

namespace troupe {

// One function per struct reads and writes it (message_codec.hpp).

template <class A>
void wire(A& a, data_position& x) {
  a(x.epoch, x.document, x.offset);
}

template <class A>
void wire(A& a, micro_batch_input& x) {
  a(x.tokens, x.targets);
}

/// A plan travels as what builds it.
template <class A>
void wire(A& a, std::shared_ptr<const schedule_plan>& plan) {
  schedule_kind kind = plan ? plan->kind() : schedule_kind::sequential;
  std::int32_t stages = plan ? plan->stages() : 0;
  std::int64_t micro_batches = plan ? plan->micro_batches() : 0;
  a(kind, stages, micro_batches);
  if constexpr (A::loading)
    plan = std::make_shared<const schedule_plan>(schedule_plan::build(kind, stages, micro_batches));
}

template <class A>
void wire(A& a, step_order& x) {
  a(x.step, x.plan, x.inputs, x.loss_scale);
}

template <class A>
void wire(A& a, stage_transfer& x) {
  a(x.gradient, x.stage, x.copy, x.micro_batch, x.value);
}

template <class A>
void wire(A& a, micro_batch_losses& x) {
  a(x.micro_batch, x.head, x.loss, x.mtp_loss, x.balance_loss, x.non_finite);
}

template <class A>
void wire(A& a, rank_step_report& x) {
  a(x.losses, x.load, x.busy_seconds);
}

template <class A>
void wire(A& a, gradient_summary& x) {
  a(x.norm_squared, x.non_finite);
}

template <class A>
void wire(A& a, named_tensors& x) {
  a(x.items);
}

template <class A>
void wire(A& a, gradient_report& x) {
  a(x.summary, x.replicated);
}

template <class A>
void wire(A& a, ema_snapshot& x) {
  a(x.weights, x.buffers);
}

template <class A>
void wire(A& a, optimizer_order& x) {
  a(x.step, x.learning_rate, x.grad_scale, x.snapshot);
}

template <class A>
void wire(A& a, router_biases& x) {
  a(x.values);
}

template <class A>
void wire(A& a, load_report& x) {
  a(x.load);
}

template <class A>
void wire(A& a, checkpoint_order& x) {
  a(x.directory, x.weights_file, x.optimizer_file);
}

template <class A>
void wire(A& a, checkpoint_written& x) {
  a(x.weights);
}

template <class A>
void wire(A& a, data_batch& x) {
  a(x.inputs, x.after);
}

template <class A>
void wire(A& a, encoded_rows& x) {
  a(x.precision, x.values, x.scales);
}

template <class A>
void wire(A& a, expert_request& x) {
  a(x.what, x.source, x.layer, x.micro_batch, x.rows, x.counts, x.reply_precision);
}

template <class A>
void wire(A& a, expert_reply& x) {
  a(x.rows);
}

template <class A>
void wire(A& a, plugin_swap_order& x) {
  a(x.kind, x.library, x.swap);
}

std::shared_ptr<const message_codec> training_codec() {
  static const std::shared_ptr<const message_codec> codec = [] {
    using namespace atoms;
    auto c = std::make_shared<message_codec>();
    // Pipeline ranks.
    c->add_request<rank_step_report, run_step_atom, step_order>("run_step");
    c->add_one_way<transfer_atom, stage_transfer>("transfer");
    // Holders of parameters (ranks and shards).
    c->add_request<gradient_report, gradients_atom>("gradients");
    c->add_request<bool, reduced_atom, named_tensors>("reduced");
    c->add_request<bool, optimize_atom, optimizer_order>("optimize");
    c->add_request<bool, biases_atom, router_biases>("set_biases");
    c->add_request<checkpoint_written, save_atom, checkpoint_order>("save");
    c->add_request<bool, stop_atom>("stop");
    c->add_request<std::int64_t, swap_atom, plugin_swap_order>("swap_plugin");
    c->add_request<bool, commit_atom>("commit_swap");
    c->add_request<bool, abort_atom>("abort_swap");
    // Expert shards.
    c->add_request<expert_reply, expert_request>("expert");
    // Balancer, EMA, data.
    c->add_request<router_biases, balance_atom, load_report, std::vector<caf::actor>>("balance");
    c->add_request<router_biases, biases_atom>("biases");
    c->add_one_way<snapshot_atom, ema_snapshot>("snapshot");
    c->add_request<bool, save_atom, std::string>("save_ema");
    c->add_request<data_batch, batch_atom, std::int64_t>("batch");
    return c;
  }();
  return codec;
}

}  // namespace troupe
