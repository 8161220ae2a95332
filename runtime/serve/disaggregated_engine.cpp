#include "runtime/serve/disaggregated_engine.hpp"

#include <algorithm>
#include <iterator>
#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <utility>

namespace troupe {

namespace {

using active_map = std::map<batch_decoder::sequence_id, pending_request>;

/// Cancels, in `decoder`, the sequences of `active` whose tickets `cancelled` says.
template <typename Cancelled>
void cancel_marked(batch_decoder& decoder, active_map& active, Cancelled cancelled) {
  for (auto it = active.begin(); it != active.end();) {
    if (!cancelled(it->second.id)) {
      ++it;
      continue;
    }
    decoder.cancel(it->first);
    it->second.fail("cancelled");
    it = active.erase(it);
  }
}

/// One step of `decoder`, its experts' load counted in `metrics` and given to the instance's
/// after_step; a step the cache cannot hold fails the newest sequence (the step changed nothing,
/// batch_decoder's contract) and gives no events.
std::vector<batch_decoder::event> step_or_shed(batch_decoder& decoder, active_map& active,
                                               const serving_instance& instance,
                                               serving_metrics* metrics) {
  try {
    auto events = decoder.step();
    if (metrics != nullptr || instance.after_step) {
      std::map<std::int64_t, std::vector<std::int64_t>> load;
      instance.model->add_expert_load(load);
      if (metrics != nullptr) metrics->expert_load(load);
      if (instance.after_step) instance.after_step(load);
    }
    return events;
  } catch (const std::exception& e) {
    const auto newest = std::prev(active.end());
    decoder.cancel(newest->first);
    newest->second.fail(e.what());
    active.erase(newest);
    return {};
  }
}

}  // namespace

disaggregated_engine::disaggregated_engine(std::vector<serving_instance> prefill,
                                           std::vector<serving_instance> decode,
                                           disaggregated_options options,
                                           std::vector<remote_decoder*> remote)
    : prefill_(std::move(prefill)),
      decode_(std::move(decode)),
      options_(options),
      queue_(options.max_queue),
      decode_state_(decode_.size() + remote.size()),
      hold_(prefill_.size() + decode_.size()) {
  if (decode_state_.empty())
    fail("disaggregated serving needs a decode instance (in this process or another)");
  if (prefill_.empty() && !remote.empty())
    fail("disaggregated serving: an engine without prefill instances has nothing to send on");
  if (options.prefill_batch < 1 || options.decode_batch < 1 || options.max_queue < 0)
    fail("disaggregated serving: prefill_batch {} and decode_batch {} must be at least 1",
         options.prefill_batch, options.decode_batch);
  const latent_cache_shape& shape = (prefill_.empty() ? decode_ : prefill_)[0].cache->shape();
  for (const auto* group : {&prefill_, &decode_})
    for (const serving_instance& i : *group) {
      const latent_cache_shape& s = i.cache->shape();
      if (s.layers != shape.layers || s.width() != shape.width() || s.type != shape.type ||
          s.block_tokens != shape.block_tokens)
        fail(
            "disaggregated serving: every instance's cache must have the prefill cache's shape "
            "(a hand-off copies rows as they are)");
      blocks_total_ += i.cache->total_blocks();
    }
  prefilling_.assign(prefill_.size(), 0);
  blocks_used_.assign(prefill_.size() + decode_.size(), 0);
  for (std::size_t d = 0; d < decode_.size(); ++d)
    decode_state_[d].free_blocks = decode_[d].cache->free_blocks();
  for (std::size_t r = 0; r < remote.size(); ++r) {
    if (remote[r] == nullptr) fail("disaggregated serving: remote decoder {} is null", r);
    decode_state_[decode_.size() + r].remote = remote[r];
  }
  for (std::size_t p = 0; p < prefill_.size(); ++p)
    threads_.emplace_back([this, p] { prefill_loop(p); });
  for (std::size_t d = 0; d < decode_state_.size(); ++d)
    threads_.emplace_back([this, d] { d < decode_.size() ? decode_loop(d) : remote_loop(d); });
}

double disaggregated_engine::hold_steps(const std::function<void()>& work) {
  return hold_.run(mutex_, wake_, stopping_, work);
}

disaggregated_engine::~disaggregated_engine() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : threads_) t.join();
  std::lock_guard delivery(remote_delivery_);
  for (decode_state& d : decode_state_) {
    for (arrival& a : d.inbox) a.request.fail("the server stopped");
    for (auto& [id, p] : d.sent) p.fail("the server stopped");
  }
}

std::future<generation_result> disaggregated_engine::submit(const generation_request& request,
                                                            token_callback on_token, ticket* id,
                                                            done_callback on_done) {
  if (prefill_.empty())
    fail("this engine decodes sequences other processes prefilled; it takes no requests");
  std::future<generation_result> future;
  {
    std::lock_guard lock(mutex_);
    // With every decode instance in a lost process, a request would be prefilled for nothing.
    if (std::all_of(decode_state_.begin(), decode_state_.end(),
                    [](const decode_state& d) { return !d.lost.empty(); }))
      fail("no decode instance is left: {}", decode_state_.front().lost);
    future = queue_.push(request, std::move(on_token), id, std::move(on_done),
                         fmt::format("for {} prefill instances", prefill_.size()));
  }
  wake_.notify_all();
  return future;
}

std::future<generation_result> disaggregated_engine::adopt(sequence_handoff handoff,
                                                           token_callback on_token, ticket* id,
                                                           done_callback on_done) {
  if (decode_.empty()) fail("this engine has no decode instance of its own to adopt a sequence");
  std::future<generation_result> future;
  {
    std::lock_guard lock(mutex_);
    pending_request p = queue_.issue(handoff.request, std::move(on_token), id, std::move(on_done));
    future = p.result.get_future();
    // NOTES: the sequence's first token came with it from the prefill process, which streamed
    // it already: the request's token count starts there, so its time per output token does too.
    p.tokens = static_cast<std::int64_t>(handoff.result.tokens.size());
    p.first_token = pending_request::clock::now();
    decode_state_[pick_decode()].inbox.push_back({std::move(p), std::move(handoff)});
  }
  wake_.notify_all();
  return future;
}

void disaggregated_engine::cancel(ticket id) {
  std::optional<pending_request> dropped;
  {
    std::lock_guard lock(mutex_);
    dropped = queue_.remove(id);
    if (!dropped && queue_.issued(id)) cancelled_.insert(id);
  }
  if (dropped) return dropped->fail("cancelled");
  wake_.notify_all();
}

std::int64_t disaggregated_engine::queued() const {
  std::lock_guard lock(mutex_);
  std::int64_t waiting = queue_.size();
  for (const decode_state& d : decode_state_) waiting += static_cast<std::int64_t>(d.inbox.size());
  return waiting;
}

std::int64_t disaggregated_engine::decoding() const {
  std::lock_guard lock(mutex_);
  std::int64_t running = std::accumulate(prefilling_.begin(), prefilling_.end(), std::int64_t{0});
  for (const decode_state& d : decode_state_) running += d.active;
  return running;
}

std::vector<std::int64_t> disaggregated_engine::decoded_per_instance() const {
  std::lock_guard lock(mutex_);
  std::vector<std::int64_t> out;
  for (const decode_state& d : decode_state_) out.push_back(d.taken);
  return out;
}

bool disaggregated_engine::take_cancel(ticket id) {
  return cancelled_.erase(id) > 0;
}

std::size_t disaggregated_engine::pick_decode() const {
  std::size_t best = 0;
  const auto load = [&](std::size_t d) {
    return decode_state_[d].active + static_cast<std::int64_t>(decode_state_[d].inbox.size());
  };
  // A lost instance is never picked while another lives (its thread fails what reaches it).
  const auto lost = [&](std::size_t d) { return !decode_state_[d].lost.empty(); };
  for (std::size_t d = 1; d < decode_state_.size(); ++d)
    if ((lost(best) && !lost(d)) ||
        (lost(best) == lost(d) &&
         (load(d) < load(best) || (load(d) == load(best) && decode_state_[d].free_blocks >
                                                                decode_state_[best].free_blocks))))
      best = d;
  return best;
}

void disaggregated_engine::report_state(std::vector<std::int64_t>& used, std::size_t slot,
                                        std::int64_t blocks_used) {
  std::int64_t waiting = 0, running = 0, in_use = 0;
  {
    std::lock_guard lock(mutex_);
    if (slot < used.size()) used[slot] = blocks_used;
    waiting = queue_.size();
    running = std::accumulate(prefilling_.begin(), prefilling_.end(), std::int64_t{0});
    for (const decode_state& d : decode_state_) {
      waiting += static_cast<std::int64_t>(d.inbox.size());
      running += d.active;
    }
    in_use = std::accumulate(used.begin(), used.end(), std::int64_t{0});
  }
  if (options_.serve_metrics != nullptr)
    options_.serve_metrics->state(waiting, running, in_use, blocks_total_ - in_use);
}

void disaggregated_engine::prefill_loop(std::size_t instance) {
  const serving_instance& me = prefill_[instance];
  batch_decoder decoder(*me.model, *me.cache, *me.context,
                        {options_.prefill_chunk, options_.metrics});
  active_map active;
  for (;;) {
    std::vector<pending_request> joining;
    std::vector<ticket> cancelled;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] {
        return stopping_ || !active.empty() || hold_.asked() ||
               (!queue_.empty() &&
                static_cast<std::int64_t>(active.size()) < options_.prefill_batch);
      });
      hold_.wait_here(lock, wake_, stopping_);
      if (stopping_) break;
      while (!queue_.empty() &&
             static_cast<std::int64_t>(active.size() + joining.size()) < options_.prefill_batch) {
        joining.push_back(queue_.pop());
      }
      for (const auto& [sequence, p] : active)
        if (take_cancel(p.id)) cancelled.push_back(p.id);
      prefilling_[instance] = static_cast<std::int64_t>(active.size() + joining.size());
    }
    cancel_marked(decoder, active, [&](ticket id) {
      return std::find(cancelled.begin(), cancelled.end(), id) != cancelled.end();
    });
    for (pending_request& p : joining) {
      generation_request r = p.request;
      r.prefill_only = true;
      try {
        const auto sequence = decoder.add(r);
        if (options_.serve_metrics != nullptr)
          options_.serve_metrics->prompt_tokens(static_cast<std::int64_t>(r.prompt.size()));
        active.emplace(sequence, std::move(p));
      } catch (const std::exception& e) {
        p.fail(e.what());
      }
    }
    if (active.empty()) continue;
    const std::vector<batch_decoder::event> events =
        step_or_shed(decoder, active, me, options_.serve_metrics);
    bool handed = false;
    for (const batch_decoder::event& e : events) {
      const auto it = active.find(e.id);
      if (it == active.end()) continue;
      pending_request& p = it->second;
      p.deliver(e.tokens, options_.serve_metrics);
      if (e.finished) {
        p.succeed(decoder.take_result(e.id), options_.serve_metrics);  // done at its first token
      } else if (e.handed_off) {
        arrival a{std::move(p), decoder.take_handoff(e.id)};
        std::lock_guard lock(mutex_);
        decode_state_[pick_decode()].inbox.push_back(std::move(a));
        handed = true;
      } else {
        continue;
      }
      active.erase(it);
    }
    {
      std::lock_guard lock(mutex_);
      prefilling_[instance] = static_cast<std::int64_t>(active.size());
    }
    if (handed) wake_.notify_all();
    report_state(blocks_used_, instance, me.cache->total_blocks() - me.cache->free_blocks());
  }
  for (auto& [sequence, p] : active) p.fail("the server stopped");
}

void disaggregated_engine::decode_loop(std::size_t instance) {
  const serving_instance& me = decode_[instance];
  decode_state& state = decode_state_[instance];
  batch_decoder decoder(*me.model, *me.cache, *me.context, {0, options_.metrics});
  active_map active;
  for (;;) {
    std::deque<arrival> arrivals;
    std::vector<ticket> cancelled;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] {
        return stopping_ || !state.inbox.empty() || !active.empty() || hold_.asked();
      });
      hold_.wait_here(lock, wake_, stopping_);
      if (stopping_) break;
      arrivals.swap(state.inbox);
      for (const auto& [sequence, p] : active)
        if (take_cancel(p.id)) cancelled.push_back(p.id);
      for (const arrival& a : arrivals)
        if (take_cancel(a.request.id)) cancelled.push_back(a.request.id);
    }
    const auto was_cancelled = [&](ticket id) {
      return std::find(cancelled.begin(), cancelled.end(), id) != cancelled.end();
    };
    cancel_marked(decoder, active, was_cancelled);
    std::deque<arrival> waiting;  // hand-offs the cache or the batch cannot take yet
    for (arrival& a : arrivals) {
      if (was_cancelled(a.request.id)) {
        a.request.fail("cancelled");
        continue;
      }
      if (static_cast<std::int64_t>(active.size()) >= options_.decode_batch) {
        waiting.push_back(std::move(a));
        continue;
      }
      try {
        active.emplace(decoder.add_handoff(a.handoff), std::move(a.request));
        std::lock_guard lock(mutex_);
        ++state.taken;
      } catch (const std::exception& e) {
        if (active.empty())
          a.request.fail(e.what());  // an empty cache cannot hold it: it never will
        else
          waiting.push_back(std::move(a));
      }
    }
    {
      std::lock_guard lock(mutex_);
      // NOTES: in front: what waited came before what arrived meanwhile.
      for (auto it = waiting.rbegin(); it != waiting.rend(); ++it)
        state.inbox.push_front(std::move(*it));
      state.active = static_cast<std::int64_t>(active.size());
    }
    if (active.empty()) continue;
    const std::vector<batch_decoder::event> events =
        step_or_shed(decoder, active, me, options_.serve_metrics);
    {
      std::lock_guard lock(mutex_);
      state.active = static_cast<std::int64_t>(active.size()) -
                     std::count_if(events.begin(), events.end(),
                                   [](const batch_decoder::event& e) { return e.finished; });
      state.free_blocks = me.cache->free_blocks();
    }
    report_state(blocks_used_, prefill_.size() + instance,
                 me.cache->total_blocks() - me.cache->free_blocks());
    for (const batch_decoder::event& e : events) {
      const auto it = active.find(e.id);
      if (it == active.end()) continue;
      it->second.deliver(e.tokens, options_.serve_metrics);
      if (!e.finished) continue;
      it->second.succeed(decoder.take_result(e.id), options_.serve_metrics);
      active.erase(it);
    }
  }
  for (auto& [sequence, p] : active) p.fail("the server stopped");
}

void disaggregated_engine::remote_loop(std::size_t instance) {
  decode_state& state = decode_state_[instance];
  for (;;) {
    std::deque<arrival> arrivals;
    std::vector<pending_request> cancelled;
    std::vector<std::pair<ticket, sequence_handoff>> sends;
    std::string lost;
    {
      std::unique_lock lock(mutex_);
      const auto cancel_pending = [&] {
        for (const auto& [id, p] : state.sent)
          if (cancelled_.count(id) != 0) return true;
        return false;
      };
      wake_.wait(lock, [&] { return stopping_ || !state.inbox.empty() || cancel_pending(); });
      if (stopping_) break;
      // A cancelled sequence fails here at once; the decode process is told, and what it still
      // reports for it is dropped (it is no longer in `sent`).
      for (auto it = state.sent.begin(); it != state.sent.end();) {
        if (!take_cancel(it->first)) {
          ++it;
          continue;
        }
        cancelled.push_back(std::move(it->second));
        it = state.sent.erase(it);
        --state.active;
      }
      lost = state.lost;
      while (!state.inbox.empty()) {
        arrival a = std::move(state.inbox.front());
        state.inbox.pop_front();
        if (take_cancel(a.request.id) || !lost.empty()) {
          arrivals.push_back(std::move(a));  // failed below, outside the lock
          continue;
        }
        const ticket id = a.request.id;
        sends.emplace_back(id, std::move(a.handoff));
        state.sent.emplace(id, std::move(a.request));
        ++state.active;
        ++state.taken;
      }
    }
    for (arrival& a : arrivals) a.request.fail(lost.empty() ? std::string("cancelled") : lost);
    for (pending_request& p : cancelled) {
      state.remote->cancel(p.id);
      p.fail("cancelled");
    }
    for (const auto& [id, handoff] : sends) {
      try {
        state.remote->send(id, handoff);
      } catch (const std::exception& e) {
        std::optional<pending_request> unsent;
        {
          std::lock_guard lock(mutex_);
          if (const auto it = state.sent.find(id); it != state.sent.end()) {
            unsent.emplace(std::move(it->second));
            state.sent.erase(it);
            --state.active;
          }
        }
        if (unsent)
          unsent->fail(fmt::format("the hand-off to the decode process failed: {}", e.what()));
      }
    }
    report_state(blocks_used_, blocks_used_.size(), 0);
  }
}

void disaggregated_engine::on_remote_event(std::size_t r, remote_event event) {
  std::lock_guard delivery(remote_delivery_);
  decode_state& state = decode_state_.at(decode_.size() + r);
  pending_request* p = nullptr;
  std::optional<pending_request> ended;
  const bool last = event.finished || !event.error.empty();
  {
    std::lock_guard lock(mutex_);
    const auto it = state.sent.find(event.id);
    if (it == state.sent.end()) return;  // failed already (its process was lost)
    if (event.free_blocks >= 0) state.free_blocks = event.free_blocks;
    if (last) {
      ended.emplace(std::move(it->second));
      state.sent.erase(it);
      --state.active;
      p = &*ended;
    } else {
      p = &it->second;
    }
  }
  p->deliver(event.tokens, options_.serve_metrics);
  if (!event.error.empty())
    p->fail(event.error);
  else if (event.finished)
    p->succeed(std::move(event.result), options_.serve_metrics);
  if (last) {
    wake_.notify_all();
    report_state(blocks_used_, blocks_used_.size(), 0);
  }
}

void disaggregated_engine::remote_lost(std::size_t r, const std::string& why) {
  std::lock_guard delivery(remote_delivery_);
  std::map<ticket, pending_request> sent;
  std::string reason;
  {
    std::lock_guard lock(mutex_);
    decode_state& state = decode_state_.at(decode_.size() + r);
    state.lost = why.empty() ? std::string("the decode process was lost") : why;
    reason = state.lost;
    sent.swap(state.sent);
    state.active = 0;
  }
  for (auto& [id, p] : sent) p.fail(reason);
  wake_.notify_all();
  report_state(blocks_used_, blocks_used_.size(), 0);
}

}  // namespace troupe
