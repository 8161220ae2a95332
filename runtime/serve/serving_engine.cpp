#include "runtime/serve/serving_engine.hpp"

#include <algorithm>
#include <iterator>
#include <map>
#include <optional>
#include <utility>
#include <vector>

namespace troupe {

serving_engine::serving_engine(cached_model& model, latent_cache& cache,
                               const exec_context& context, serving_options options)
    : model_(&model),
      cache_(&cache),
      context_(&context),
      options_(options),
      queue_(options.max_queue) {
  if (options.max_batch < 1 || options.max_queue < 0)
    fail("serving: max_batch {} must be at least 1 and max_queue {} at least 0", options.max_batch,
         options.max_queue);
  thread_ = std::thread([this] { run(); });
}

serving_engine::~serving_engine() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

std::future<generation_result> serving_engine::submit(const generation_request& request,
                                                      token_callback on_token, ticket* id,
                                                      done_callback on_done) {
  std::future<generation_result> future;
  {
    std::lock_guard lock(mutex_);
    future = queue_.push(request, std::move(on_token), id, std::move(on_done),
                         fmt::format("to join a batch of {}", options_.max_batch));
  }
  wake_.notify_all();
  return future;
}

void serving_engine::cancel(ticket id) {
  std::optional<pending_request> dropped;
  {
    std::lock_guard lock(mutex_);
    dropped = queue_.remove(id);
    if (!dropped) cancelled_.push_back(id);
  }
  if (dropped) return dropped->fail("cancelled");  // outside the lock: on_done may submit
  wake_.notify_all();
}

std::int64_t serving_engine::queued() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

std::int64_t serving_engine::decoding() const {
  std::lock_guard lock(mutex_);
  return decoding_;
}

void serving_engine::report_state(std::int64_t running) {
  std::int64_t waiting = 0;
  {
    std::lock_guard lock(mutex_);
    decoding_ = running;
    waiting = queue_.size();
  }
  if (options_.serve_metrics != nullptr)
    options_.serve_metrics->state(waiting, running, cache_->total_blocks() - cache_->free_blocks(),
                                  cache_->free_blocks());
}

double serving_engine::hold_steps(const std::function<void()>& work) {
  return hold_.run(mutex_, wake_, stopping_, work);
}

void serving_engine::run() {
  batch_decoder decoder(*model_, *cache_, *context_, {options_.prefill_chunk, options_.metrics});
  std::map<batch_decoder::sequence_id, pending_request> active;  // in the order they joined
  const auto fail_request = [](pending_request& p, const std::string& why) { p.fail(why); };
  for (;;) {
    std::vector<pending_request> joining;
    std::vector<ticket> cancels;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] {
        return stopping_ || !queue_.empty() || !active.empty() || !cancelled_.empty() ||
               hold_.asked();
      });
      hold_.wait_here(lock, wake_, stopping_);
      if (stopping_) break;
      while (!queue_.empty() &&
             static_cast<std::int64_t>(active.size() + joining.size()) < options_.max_batch) {
        joining.push_back(queue_.pop());
      }
      cancels.swap(cancelled_);
    }
    for (const ticket id : cancels) {
      const auto it = std::find_if(active.begin(), active.end(),
                                   [&](const auto& entry) { return entry.second.id == id; });
      if (it == active.end()) continue;
      decoder.cancel(it->first);
      fail_request(it->second, "cancelled");
      active.erase(it);
    }
    for (pending_request& p : joining) {
      try {
        const auto sequence = decoder.add(p.request);
        if (options_.serve_metrics != nullptr)
          options_.serve_metrics->prompt_tokens(static_cast<std::int64_t>(p.request.prompt.size()));
        active.emplace(sequence, std::move(p));
      } catch (const std::exception& e) {
        fail_request(p, e.what());
      }
    }
    report_state(static_cast<std::int64_t>(active.size()));
    if (active.empty()) continue;
    std::vector<batch_decoder::event> events;
    try {
      events = decoder.step();
    } catch (const std::exception& e) {
      // NOTES: the step changed nothing (batch_decoder's contract); the newest sequence leaves
      // so that the older ones, which fitted before it came, can go on.
      const auto newest = std::prev(active.end());
      decoder.cancel(newest->first);
      fail_request(newest->second, e.what());
      active.erase(newest);
      report_state(static_cast<std::int64_t>(active.size()));
      continue;
    }
    if (options_.serve_metrics != nullptr || options_.after_step) {
      std::map<std::int64_t, std::vector<std::int64_t>> load;
      model_->add_expert_load(load);
      if (options_.serve_metrics != nullptr) options_.serve_metrics->expert_load(load);
      if (options_.after_step) options_.after_step(load);
    }
    // The state after the step, before any future is readied: a client that reads the metrics
    // after its reply sees its blocks free.
    const auto finished = std::count_if(events.begin(), events.end(),
                                        [](const batch_decoder::event& e) { return e.finished; });
    report_state(static_cast<std::int64_t>(active.size()) - finished);
    for (const batch_decoder::event& e : events) {
      const auto it = active.find(e.id);
      if (it == active.end()) continue;
      pending_request& p = it->second;
      p.deliver(e.tokens, options_.serve_metrics);
      if (e.finished) {
        p.succeed(decoder.take_result(e.id), options_.serve_metrics);
        active.erase(it);
      }
    }
  }
  for (auto& [sequence, p] : active) fail_request(p, "the server stopped");
}

}  // namespace troupe
