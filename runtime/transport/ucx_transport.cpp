#include "runtime/transport/ucx_transport.hpp"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include <ucp/api/ucp.h>
#include <ucs/config/global_opts.h>

#include "runtime/core/error.hpp"
#include "runtime/transport/buffer_pool.hpp"

namespace troupe {

namespace ucx_wire {

/// The active-message id troupe's tensors use.
constexpr unsigned tensor_message_id = 7;
constexpr std::size_t max_rank = 8;

/// What precedes a tensor's bytes: enough to allocate the receiving tensor before the data.
/// (Named, not in an anonymous namespace: ucx_transport::state's records hold one.)
struct tensor_header {
  std::int32_t from = 0;
  std::uint8_t type = 0;
  std::uint8_t dims = 0;
  std::uint64_t tag = 0;
  std::int64_t shape[max_rank] = {};
};

}  // namespace ucx_wire

using ucx_wire::max_rank;
using ucx_wire::tensor_header;
using ucx_wire::tensor_message_id;

namespace {

std::string ucx_failure(const char* what, ucs_status_t status) {
  return fmt::format("UCX {}: {}", what, ucs_status_string(status));
}

}  // namespace

struct ucx_transport::state {
  ucx_transport* owner = nullptr;
  ucx_options options;
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
  int wake_fd = -1;   // eventfd: work was queued
  int epoll_fd = -1;  // waits on the worker's fd and wake_fd

  std::mutex mutex;  // guards `tasks` and `failure`
  // Work for the loop; called with false instead when the transport closes first.
  std::deque<std::function<void(bool run)>> tasks;
  failure_handler failure;
  std::atomic<bool> closing{false};
  // Whether run() is inside its loop; the destructor waits for it to leave. The caller waits
  // for the progress actor through CAF too, but TSan sees only this (CAF is not instrumented).
  bool loop_running = false;
  std::condition_variable loop_exited;

  // Touched by the loop thread only.
  std::map<int, ucp_ep_h> endpoints;
  struct send_record;
  struct flow {
    int in_flight = 0;
    std::size_t bytes_in_flight = 0;
    std::deque<send_record*> waiting;
  };
  std::map<int, flow> flows;       // by peer
  std::set<send_record*> started;  // handed to UCX, not completed yet

  bool has_room(const flow& f, std::size_t bytes) const {
    return f.in_flight == 0 || (f.in_flight < options.max_in_flight &&
                                f.bytes_in_flight + bytes <= options.max_bytes_in_flight);
  }
  std::map<std::pair<int, std::uint64_t>, tensor> arrived;
  std::map<std::pair<int, std::uint64_t>, arrival> expected;
  std::atomic<std::uint64_t> sent{0}, received{0};
  buffer_pool buffers{1u << 30};

  void queue(std::function<void(bool)> task) {
    {
      std::lock_guard lock(mutex);
      if (!closing.load(std::memory_order_acquire)) {
        tasks.push_back(std::move(task));
        task = nullptr;
      }
    }
    if (task) {
      task(false);
      return;
    }
    const std::uint64_t one = 1;
    (void)!::write(wake_fd, &one, sizeof one);
  }

  void arrive(int from, std::uint64_t tag, tensor value) {
    received.fetch_add(1, std::memory_order_relaxed);
    const auto key = std::make_pair(from, tag);
    auto it = expected.find(key);
    if (it == expected.end()) {
      arrived.emplace(key, std::move(value));
      return;
    }
    arrival callback = std::move(it->second);
    expected.erase(it);
    callback(std::move(value));
  }

  void peer_failed(int peer, const std::string& why) {
    failure_handler handler;
    {
      std::lock_guard lock(mutex);
      handler = failure;
    }
    if (handler) handler(peer, why);
  }
};

struct ucx_transport::state::send_record {
  ucx_transport::state* state = nullptr;
  int peer = 0;
  tensor_header header;  // must outlive the send (UCX 1.13)
  tensor value;          // keeps the bytes alive
  ucx_transport::send_done done;
};

namespace {

struct receive_record {
  ucx_transport::state* state = nullptr;
  int from = 0;
  std::uint64_t tag = 0;
  tensor value;
};

using send_record = ucx_transport::state::send_record;

void start_send(send_record* record);

/// A send is over: report it, and start the peer's next waiting send.
void finish_send(send_record* record, ucs_status_t status, bool started = true) {
  ucx_transport::state* st = record->state;
  const int peer = record->peer;
  const std::size_t bytes = record->value.nbytes();
  st->started.erase(record);
  if (status == UCS_OK) st->sent.fetch_add(1, std::memory_order_relaxed);
  if (record->done) record->done(status == UCS_OK ? std::string() : ucx_failure("send", status));
  delete record;
  if (!started) return;
  auto& flow = st->flows[peer];
  --flow.in_flight;
  flow.bytes_in_flight -= bytes;
  while (!flow.waiting.empty() && st->has_room(flow, flow.waiting.front()->value.nbytes())) {
    send_record* next = flow.waiting.front();
    flow.waiting.pop_front();
    start_send(next);
  }
}

void on_send_done(void* request, ucs_status_t status, void* user_data) {
  ucp_request_free(request);
  finish_send(static_cast<send_record*>(user_data), status);
}

/// Hands `record` to UCX (its peer has room in flight).
void start_send(send_record* record) {
  ucx_transport::state* st = record->state;
  st->started.insert(record);
  auto& flow = st->flows[record->peer];
  ++flow.in_flight;
  flow.bytes_in_flight += record->value.nbytes();
  auto it = st->endpoints.find(record->peer);
  if (it == st->endpoints.end()) {
    if (record->done) record->done(fmt::format("UCX send: rank {} is not connected", record->peer));
    record->done = nullptr;
    finish_send(record, UCS_OK);
    return;
  }
  ucp_request_param_t params{};
  params.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  params.cb.send = on_send_done;
  params.user_data = record;
  ucs_status_ptr_t request =
      ucp_am_send_nbx(it->second, tensor_message_id, &record->header, sizeof record->header,
                      record->value.data(), record->value.nbytes(), &params);
  if (request == nullptr)
    finish_send(record, UCS_OK);
  else if (UCS_PTR_IS_ERR(request))
    finish_send(record, UCS_PTR_STATUS(request));
}

void on_receive_done(void* request, ucs_status_t status, std::size_t, void* user_data) {
  auto* record = static_cast<receive_record*>(user_data);
  if (status == UCS_OK)
    record->state->arrive(record->from, record->tag, std::move(record->value));
  else
    record->state->peer_failed(record->from, ucx_failure("receive", status));
  delete record;
  ucp_request_free(request);
}

ucs_status_t on_tensor_message(void* arg, const void* header, std::size_t header_length, void* data,
                               std::size_t length, const ucp_am_recv_param_t* param) {
  auto* st = static_cast<ucx_transport::state*>(arg);
  if (header_length != sizeof(tensor_header)) return UCS_ERR_INVALID_PARAM;
  tensor_header h;
  std::memcpy(&h, header, sizeof h);
  if (h.type > static_cast<std::uint8_t>(dtype::u8) || h.dims > max_rank)
    return UCS_ERR_INVALID_PARAM;
  std::vector<std::int64_t> shape(h.shape, h.shape + h.dims);
  std::int64_t count = 1;
  for (std::int64_t d : shape) count *= d;
  if (count < 0 || static_cast<std::size_t>(count) * size_of(static_cast<dtype>(h.type)) != length)
    return UCS_ERR_INVALID_PARAM;
  tensor value = tensor::over(st->buffers.take(length), static_cast<dtype>(h.type), shape);

  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) == 0) {
    // Eager: the bytes are here already; one copy into the tensor.
    if (length > 0) std::memcpy(value.data(), data, length);
    st->arrive(h.from, h.tag, std::move(value));
    return UCS_OK;
  }
  // Rendezvous: UCX fetches the bytes straight into the tensor.
  auto* record = new receive_record{st, h.from, h.tag, value};
  ucp_request_param_t receive{};
  receive.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  receive.cb.recv_am = on_receive_done;
  receive.user_data = record;
  ucs_status_ptr_t request = ucp_am_recv_data_nbx(st->worker, data, value.data(), length, &receive);
  if (request == nullptr) {
    st->arrive(h.from, h.tag, std::move(record->value));
    delete record;
  } else if (UCS_PTR_IS_ERR(request)) {
    st->peer_failed(h.from, ucx_failure("receive", UCS_PTR_STATUS(request)));
    delete record;
  }
  return UCS_OK;
}

void on_endpoint_error(void* arg, ucp_ep_h endpoint, ucs_status_t status) {
  auto* st = static_cast<ucx_transport::state*>(arg);
  for (auto& [peer, ep] : st->endpoints)
    if (ep == endpoint) {
      st->peer_failed(peer, ucx_failure("endpoint", status));
      return;
    }
}

void cancel_tasks(ucx_transport::state& st) {
  std::deque<std::function<void(bool)>> rest;
  {
    std::lock_guard lock(st.mutex);
    rest.swap(st.tasks);
  }
  for (auto& task : rest) task(false);
}

void check(ucs_status_t status, const char* what) {
  if (status != UCS_OK) fail("cannot start UCX: {}", ucx_failure(what, status));
}

}  // namespace

ucx_transport::ucx_transport(int rank, ucx_options options)
    : rank_(rank), state_(std::make_unique<state>()) {
  state_->owner = this;
  state_->options = options;
  // Peer error handling otherwise silently disables shared memory (see the header).
  for (const char* name :
       {"UCX_MM_ERROR_HANDLING", "UCX_POSIX_ERROR_HANDLING", "UCX_SYSV_ERROR_HANDLING"})
    setenv(name, "y", 0);
  // After a peer fails, UCX warns at exit about each request the peer never completed; the
  // failure itself is reported by troupe. UCX_LOG_LEVEL, when set, still decides.
  if (std::getenv("UCX_LOG_LEVEL") == nullptr)
    ucs_global_opts.log_component.log_level = UCS_LOG_LEVEL_ERROR;

  ucp_config_t* config = nullptr;
  check(ucp_config_read(nullptr, nullptr, &config), "config");
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.name = "troupe";
  const ucs_status_t status = ucp_init(&params, config, &state_->context);
  ucp_config_release(config);
  check(status, "init");

  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;
  check(ucp_worker_create(state_->context, &worker_params, &state_->worker), "worker");

  ucp_am_handler_param_t handler{};
  handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                       UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  handler.id = tensor_message_id;
  handler.cb = on_tensor_message;
  handler.arg = state_.get();
  handler.flags = UCP_AM_FLAG_WHOLE_MSG;
  check(ucp_worker_set_am_recv_handler(state_->worker, &handler), "active-message handler");

  ucp_address_t* address = nullptr;
  std::size_t length = 0;
  check(ucp_worker_get_address(state_->worker, &address, &length), "worker address");
  address_.assign(reinterpret_cast<const std::uint8_t*>(address),
                  reinterpret_cast<const std::uint8_t*>(address) + length);
  ucp_worker_release_address(state_->worker, address);

  int worker_fd = -1;
  check(ucp_worker_get_efd(state_->worker, &worker_fd), "event fd");
  state_->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  state_->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  if (state_->wake_fd < 0 || state_->epoll_fd < 0)
    fail("cannot start UCX's progress loop: {}", std::strerror(errno));
  for (int fd : {worker_fd, state_->wake_fd}) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = fd;
    if (epoll_ctl(state_->epoll_fd, EPOLL_CTL_ADD, fd, &event) != 0)
      fail("cannot start UCX's progress loop: {}", std::strerror(errno));
  }
}

ucx_transport::~ucx_transport() {
  close();
  {
    std::unique_lock lock(state_->mutex);
    state_->loop_exited.wait(lock, [&] { return !state_->loop_running; });
  }
  // Endpoints go first (forced: peers may be gone), then the worker and the context.
  for (auto& [peer, ep] : state_->endpoints) {
    ucp_request_param_t params{};
    params.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    params.flags = UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t request = ucp_ep_close_nbx(ep, &params);
    if (UCS_PTR_IS_PTR(request)) {
      while (ucp_request_check_status(request) == UCS_INPROGRESS)
        ucp_worker_progress(state_->worker);
      ucp_request_free(request);
    }
  }
  state_->endpoints.clear();
  cancel_tasks(*state_);
  if (state_->worker) ucp_worker_destroy(state_->worker);
  // Sends to a peer that died never complete: the worker took their requests; free the rest.
  for (send_record* record : state_->started) {
    if (record->done) record->done("UCX send: the transport closed first");
    delete record;
  }
  state_->started.clear();
  if (state_->context) ucp_cleanup(state_->context);
  if (state_->epoll_fd >= 0) ::close(state_->epoll_fd);
  if (state_->wake_fd >= 0) ::close(state_->wake_fd);
}

void ucx_transport::connect(int peer, std::vector<std::uint8_t> address) {
  state* st = state_.get();
  st->queue([st, peer, address = std::move(address)](bool run) {
    if (!run) return;
    ucp_ep_params_t params{};
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(address.data());
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    params.err_handler.cb = on_endpoint_error;
    params.err_handler.arg = st;
    ucp_ep_h endpoint = nullptr;
    const ucs_status_t status = ucp_ep_create(st->worker, &params, &endpoint);
    if (status != UCS_OK) {
      st->peer_failed(peer, ucx_failure("connect", status));
      return;
    }
    st->endpoints[peer] = endpoint;
  });
}

void ucx_transport::send(int peer, std::uint64_t tag, tensor value, send_done done) {
  if (!value.where().is_cpu())
    fail(
        "UCX transport: a tensor for rank {} is in GPU memory; Debian's UCX moves host memory "
        "only",
        peer);
  if (value.dim() > static_cast<std::int64_t>(max_rank))
    fail("UCX transport: a tensor of rank {} (at most {})", value.dim(), max_rank);
  auto* record = new send_record;
  record->state = state_.get();
  record->peer = peer;
  record->header.from = rank_;
  record->header.type = static_cast<std::uint8_t>(value.type());
  record->header.dims = static_cast<std::uint8_t>(value.dim());
  record->header.tag = tag;
  for (std::int64_t d = 0; d < value.dim(); ++d)
    record->header.shape[d] = value.shape()[static_cast<std::size_t>(d)];
  record->value = value.is_contiguous() ? std::move(value) : value.clone();
  record->done = std::move(done);
  state* st = state_.get();
  st->queue([st, peer, record](bool run) {
    if (!run) {
      if (record->done) record->done("UCX send: the transport closed first");
      delete record;
      return;
    }
    auto& flow = st->flows[peer];
    if (!flow.waiting.empty() || !st->has_room(flow, record->value.nbytes()))
      flow.waiting.push_back(record);
    else
      start_send(record);
  });
}

void ucx_transport::expect(int peer, std::uint64_t tag, arrival on_arrival) {
  state* st = state_.get();
  st->queue([st, peer, tag, on_arrival = std::move(on_arrival)](bool run) mutable {
    if (!run) return;
    const auto key = std::make_pair(peer, tag);
    auto it = st->arrived.find(key);
    if (it == st->arrived.end()) {
      st->expected.emplace(key, std::move(on_arrival));
      return;
    }
    tensor value = std::move(it->second);
    st->arrived.erase(it);
    on_arrival(std::move(value));
  });
}

void ucx_transport::on_failure(failure_handler handler) {
  std::lock_guard lock(state_->mutex);
  state_->failure = std::move(handler);
}

void ucx_transport::run() {
  state& st = *state_;
  {
    std::lock_guard lock(st.mutex);
    st.loop_running = true;
  }
  auto last_event = std::chrono::steady_clock::now();
  while (!st.closing.load(std::memory_order_acquire)) {
    std::deque<std::function<void(bool)>> tasks;
    {
      std::lock_guard lock(st.mutex);
      tasks.swap(st.tasks);
    }
    for (auto& task : tasks) task(true);
    bool busy = !tasks.empty();
    while (ucp_worker_progress(st.worker) != 0) busy = true;
    const auto now = std::chrono::steady_clock::now();
    if (busy) {
      last_event = now;
      continue;
    }
    if (now - last_event < st.options.spin) continue;
    // Idle: sleep until the worker or a queued task wakes us (arm fails with BUSY when events
    // came in since the last progress call).
    if (ucp_worker_arm(st.worker) == UCS_ERR_BUSY) continue;
    epoll_event events[2];
    (void)epoll_wait(st.epoll_fd, events, 2, 100);
    std::uint64_t drained = 0;
    while (::read(st.wake_fd, &drained, sizeof drained) > 0) {
    }
    last_event = std::chrono::steady_clock::now();
  }
  // Fail whatever is still queued, so no caller waits for a send that never happens.
  cancel_tasks(st);
  for (auto& [peer, flow] : st.flows) {
    for (send_record* record : flow.waiting) {
      if (record->done) record->done("UCX send: the transport closed first");
      delete record;
    }
    flow.waiting.clear();
  }
  {
    std::lock_guard lock(st.mutex);
    st.loop_running = false;
  }
  st.loop_exited.notify_all();
}

void ucx_transport::close() {
  state_->closing.store(true, std::memory_order_release);
  const std::uint64_t one = 1;
  if (state_->wake_fd >= 0) (void)!::write(state_->wake_fd, &one, sizeof one);
}

std::uint64_t ucx_transport::sent_count() const {
  return state_->sent.load(std::memory_order_relaxed);
}

std::uint64_t ucx_transport::received_count() const {
  return state_->received.load(std::memory_order_relaxed);
}

}  // namespace troupe
