#pragma once

// The bookkeeping of a layer's split backward (troupe_backward_part), once for every plugin in
// this tree. Forward saves what backward needs under its micro-batch, so several micro-batches
// are in flight at once; DualPipe-style schedules then run backward in two parts:
//   input part   the input gradients: once per micro-batch, after its forward;
//   weight part  the weight gradients: once, after the input part, and the saved state goes;
//   both         the two in one call.
// A failure anywhere drops the micro-batch. A layer keeps a saved_micro_batches<State> and writes
// only the two parts' arithmetic:
//
//   return saved_.backward(micro_batch, part, error,
//                          [&](saved_state& s) { return backward_input(context, s, ..., error); },
//                          [&](saved_state& s) { return backward_weight(context, s, error); });
//
// Components of a layer that expose the two parts separately (the MoE router, experts) use
// for_input / input_done / for_weight / release, which make the same checks.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "plugins/common/plugin_support.hpp"

namespace troupe::plugin {

template <class State>
class saved_micro_batches {
 public:
  /// `who` starts every message ("router: "; "" for a whole layer).
  explicit saved_micro_batches(std::string_view who = "") : who_(who) {}

  /// Forward: a fresh state for `micro_batch`; null (and `error` filled) when one is in flight.
  State* start(std::int64_t micro_batch, troupe_error* error) {
    auto [it, inserted] = states_.try_emplace(micro_batch);
    if (!inserted) {
      fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "{}micro-batch {} is already in flight", who_,
           micro_batch);
      return nullptr;
    }
    return &it->second.state;
  }

  bool contains(std::int64_t micro_batch) const { return states_.count(micro_batch) != 0; }

  /// Drops what was saved for `micro_batch` (forget, a failed call).
  void release(std::int64_t micro_batch) { states_.erase(micro_batch); }

  /// The input part: the state saved for `micro_batch` if its input part has not run; else null
  /// with `error` filled.
  State* for_input(std::int64_t micro_batch, troupe_error* error) {
    entry* e = find(micro_batch, error);
    if (e == nullptr) return nullptr;
    if (e->input_done) {
      fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
           "{}input gradients of micro-batch {} are done already", who_, micro_batch);
      return nullptr;
    }
    return &e->state;
  }
  void input_done(std::int64_t micro_batch) { states_.at(micro_batch).input_done = true; }

  /// The weight part: the state saved for `micro_batch` once its input part ran; else null with
  /// `error` filled. The caller releases it when done.
  State* for_weight(std::int64_t micro_batch, troupe_error* error) {
    entry* e = find(micro_batch, error);
    if (e == nullptr) return nullptr;
    if (!e->input_done) {
      fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
           "{}the weight-gradient part of micro-batch {} needs the input-gradient part first", who_,
           micro_batch);
      return nullptr;
    }
    return &e->state;
  }

  /// Runs `part` of backward for `micro_batch` with input(State&) and weight(State&), each
  /// returning a troupe_status (an exception becomes an error status, guarded()). A failure drops
  /// the micro-batch; the weight part releases it when done.
  template <class Input, class Weight>
  troupe_status backward(std::int64_t micro_batch, troupe_backward_part part, troupe_error* error,
                         Input input, Weight weight) {
    const troupe_status status = guarded(error, [&]() -> troupe_status {
      if (part != TROUPE_BACKWARD_WEIGHT) {
        State* s = for_input(micro_batch, error);
        if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
        TROUPE_TRY(input(*s));
        input_done(micro_batch);
      }
      if (part != TROUPE_BACKWARD_INPUT) {
        State* s = for_weight(micro_batch, error);
        if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
        TROUPE_TRY(weight(*s));
        release(micro_batch);
      }
      return TROUPE_STATUS_OK;
    });
    if (status != TROUPE_STATUS_OK) release(micro_batch);
    return status;
  }

  /// Every micro-batch in flight and its state, for statistics.
  template <class F>
  void for_each(F f) const {
    for (const auto& [id, e] : states_) f(id, e.state);
  }
  std::size_t size() const { return states_.size(); }

 private:
  struct entry {
    State state;
    bool input_done = false;
  };

  entry* find(std::int64_t micro_batch, troupe_error* error) {
    auto it = states_.find(micro_batch);
    if (it == states_.end()) {
      fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "{}no forward saved for micro-batch {}", who_,
           micro_batch);
      return nullptr;
    }
    return &it->second;
  }

  std::string who_;
  std::map<std::int64_t, entry> states_;
};

}  // namespace troupe::plugin
