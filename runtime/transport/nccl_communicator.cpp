#include "runtime/transport/nccl_communicator.hpp"

#include <dlfcn.h>
#include <nccl.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "runtime/core/error.hpp"
#include "runtime/device/stream.hpp"

namespace troupe {

namespace {

constexpr const char* library = "libnccl.so.2";

/// The NCCL entry points troupe calls, loaded once.
struct nccl_api {
  decltype(&ncclGetUniqueId) get_unique_id;
  decltype(&ncclCommInitRankConfig) init_rank_config;
  decltype(&ncclCommGetAsyncError) async_error;
  decltype(&ncclCommAbort) abort;
  decltype(&ncclCommFinalize) finalize;
  decltype(&ncclCommDestroy) destroy;
  decltype(&ncclGetErrorString) error_string;
  decltype(&ncclGetLastError) last_error;
  decltype(&ncclAllReduce) all_reduce;
  decltype(&ncclReduceScatter) reduce_scatter;
  decltype(&ncclAllGather) all_gather;
  decltype(&ncclSend) send;
  decltype(&ncclRecv) recv;
  decltype(&ncclGroupStart) group_start;
  decltype(&ncclGroupEnd) group_end;
};

struct loaded {
  nccl_api api{};
  std::string failure;  // why NCCL cannot be used; empty when it can
};

const loaded& nccl() {
  static const loaded result = [] {
    loaded out;
    // NOTES: NVLink SHARP (multicast) is off: on the lent machines it needs the fabric manager's
    // multicast objects, and a communicator that asks for them fails or hangs at init.
    ::setenv("NCCL_NVLS_ENABLE", "0", 0);
    void* handle = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      out.failure = fmt::format(
          "cannot load NCCL ({}): {}; put the NCCL 2 library (the CUDA toolkit's lib, or the "
          "nvidia-nccl wheel's lib folder PyTorch brings) on LD_LIBRARY_PATH",
          library, dlerror());
      return out;
    }
    auto resolve = [&](auto& slot, const char* name) {
      slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(dlsym(handle, name));
      if (slot == nullptr && out.failure.empty())
        out.failure = fmt::format("{}: no symbol {} (NCCL 2.19 or newer is needed)", library, name);
    };
    nccl_api& a = out.api;
    resolve(a.get_unique_id, "ncclGetUniqueId");
    resolve(a.init_rank_config, "ncclCommInitRankConfig");
    resolve(a.async_error, "ncclCommGetAsyncError");
    resolve(a.abort, "ncclCommAbort");
    resolve(a.finalize, "ncclCommFinalize");
    resolve(a.destroy, "ncclCommDestroy");
    resolve(a.error_string, "ncclGetErrorString");
    resolve(a.last_error, "ncclGetLastError");
    resolve(a.all_reduce, "ncclAllReduce");
    resolve(a.reduce_scatter, "ncclReduceScatter");
    resolve(a.all_gather, "ncclAllGather");
    resolve(a.send, "ncclSend");
    resolve(a.recv, "ncclRecv");
    resolve(a.group_start, "ncclGroupStart");
    resolve(a.group_end, "ncclGroupEnd");
    return out;  // the library stays loaded until the process ends
  }();
  return result;
}

const nccl_api& api() {
  const loaded& l = nccl();
  if (!l.failure.empty()) fail("{}", l.failure);
  return l.api;
}

/// NOTES: NCCL launches of two communicators on one GPU must not interleave (each waits for
/// the other's kernels): one lock per GPU orders them.
std::mutex& launch_lock(int ordinal) {
  static std::mutex guard;
  static std::map<int, std::unique_ptr<std::mutex>> locks;
  std::lock_guard<std::mutex> hold(guard);
  auto& lock = locks[ordinal];
  if (!lock) lock = std::make_unique<std::mutex>();
  return *lock;
}

ncclDataType_t nccl_type(dtype type) {
  switch (type) {
    case dtype::f32:
      return ncclFloat32;
    case dtype::bf16:
      return ncclBfloat16;
    case dtype::f16:
      return ncclFloat16;
    case dtype::i32:
      return ncclInt32;
    case dtype::i64:
      return ncclInt64;
    case dtype::f8_e4m3:  // moved as bytes; never summed
    case dtype::u8:
      return ncclUint8;
  }
  return ncclUint8;
}

}  // namespace

struct nccl_communicator::state {
  ncclComm_t comm = nullptr;
  int ranks = 0, rank = 0, ordinal = 0;
  std::chrono::milliseconds deadline{0};
  std::unique_ptr<cuda::stream> stream;
  bool aborted = false;
  std::string aborted_why;

  std::string name() const {
    return fmt::format("NCCL communicator of {} ranks (rank {}, cuda:{})", ranks, rank, ordinal);
  }

  /// Aborts the communicator and throws `why` about `what`.
  [[noreturn]] void abort_with(const std::string& what, const std::string& why) {
    aborted = true;
    aborted_why = fmt::format("{} failed: {}", what, why);
    if (comm != nullptr) api().abort(comm);  // NOTES: frees the threads NCCL runs for it
    comm = nullptr;
    fail("{}: {}; the communicator is aborted", name(), aborted_why);
  }

  /// Checks an NCCL call's result (ncclInProgress is fine: non-blocking communicators).
  void check(ncclResult_t result, const std::string& what) {
    if (result == ncclSuccess || result == ncclInProgress) return;
    const char* detail = api().last_error(comm);
    abort_with(what, fmt::format("{}{}", api().error_string(result),
                                 detail != nullptr && *detail != 0 ? fmt::format(" ({})", detail)
                                                                   : std::string()));
  }

  /// Waits, polling NCCL's asynchronous error and the stream's work, until `what` is done; past
  /// the deadline the communicator is aborted. `pending` is the stream's work to wait for (null:
  /// only the communicator's own state, as after init).
  void wait(const std::string& what, const cuda::event* pending,
            std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now()) {
    // NOTES: the first 200 us are polled without sleeping: most collectives of a step (counts,
    // norms, a dispatch of a few MB) finish within that, and each sleep adds its timer slack
    // (50 us or more) to the wait. Longer waits back off to 1 ms between polls.
    const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
    auto pause = std::chrono::microseconds(10);
    for (;;) {
      ncclResult_t progress = ncclSuccess;
      const ncclResult_t polled = api().async_error(comm, &progress);
      if (polled != ncclSuccess) check(polled, what);
      if (progress != ncclSuccess && progress != ncclInProgress) check(progress, what);
      if (progress == ncclSuccess && (pending == nullptr || pending->done())) return;
      if (std::chrono::steady_clock::now() - start > deadline)
        abort_with(what, fmt::format("not done within {:.1f} s: a rank of the group is dead, "
                                     "hung or was never started",
                                     deadline.count() / 1000.0));
      if (std::chrono::steady_clock::now() < spin_until) {
        std::this_thread::yield();
        continue;
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }

  /// Sends posted and not yet known to be done (post_send), each with its tensor kept alive.
  struct posted {
    std::string what;
    cuda::event done;
    tensor values;
  };
  std::deque<posted> posted_sends;

  /// Drops the posted sends that are done.
  void reap() {
    while (!posted_sends.empty() && posted_sends.front().done.done()) posted_sends.pop_front();
  }

  /// Runs `enqueue` (NCCL calls on the communicator's stream) under the GPU's launch lock, then
  /// waits for it.
  template <class Enqueue>
  void run(const std::string& what, Enqueue enqueue) {
    const auto start = std::chrono::steady_clock::now();
    cuda::event done = launch(what, enqueue, start);
    wait(what, &done, start);
  }

  /// Runs `enqueue` under the GPU's launch lock; returns an event after its work.
  template <class Enqueue>
  cuda::event launch(const std::string& what, Enqueue enqueue,
                     std::chrono::steady_clock::time_point start) {
    if (aborted) fail("{}: {} after an earlier failure: {}", name(), what, aborted_why);
    // The inputs are written, and the outputs' memory last used, on the caller's stream.
    cuda::event ready(ordinal);
    ready.record(cuda::current_stream(ordinal));
    stream->wait(ready);
    cuda::event done(ordinal);
    {
      // NOTES: the lock is held until NCCL has enqueued (connections to peers included), so
      // every process must launch on its communicators of a GPU in one order, as NCCL requires
      // anyway; the deadline ends a wait on a peer that does not come.
      std::lock_guard<std::mutex> hold(launch_lock(ordinal));
      enqueue(static_cast<cudaStream_t>(stream->native()));
      // NOTES: a non-blocking communicator may still be enqueueing (connecting to a peer, say):
      // its kernels are on the stream once it says so, and only then can the event follow them.
      wait(what, nullptr, start);
      done.record(*stream);
    }
    return done;
  }

  void require_on_device(const tensor& t, const std::string& what) const {
    if (!t.where().is_cuda() || t.where().index != ordinal)
      fail("{}: {} is on {}, the communicator on cuda:{}", name(), what, to_string(t.where()),
           ordinal);
    if (!t.is_contiguous()) fail("{}: {} must be contiguous", name(), what);
  }
};

bool nccl_communicator::available(std::string* why) {
  const loaded& l = nccl();
  if (why != nullptr) *why = l.failure;
  return l.failure.empty();
}

std::vector<std::uint8_t> nccl_communicator::make_id() {
  ncclUniqueId id;
  const ncclResult_t result = api().get_unique_id(&id);
  if (result != ncclSuccess) fail("NCCL cannot make a unique id: {}", api().error_string(result));
  return {reinterpret_cast<const std::uint8_t*>(id.internal),
          reinterpret_cast<const std::uint8_t*>(id.internal) + sizeof(id.internal)};
}

nccl_communicator::nccl_communicator(std::span<const std::uint8_t> id, int ranks, int rank,
                                     int ordinal, std::chrono::milliseconds deadline)
    : s_(std::make_unique<state>()) {
  s_->ranks = ranks;
  s_->rank = rank;
  s_->ordinal = ordinal;
  s_->deadline = deadline;
  ncclUniqueId unique;
  if (id.size() != sizeof(unique.internal))
    fail("an NCCL unique id has {} bytes, got {}", sizeof(unique.internal), id.size());
  if (ranks < 1 || rank < 0 || rank >= ranks)
    fail("NCCL: rank {} of {} ranks does not exist", rank, ranks);
  std::memcpy(unique.internal, id.data(), id.size());
  s_->stream = std::make_unique<cuda::stream>(ordinal);
  // NOTES: non-blocking, so that a rank that never comes cannot hold this thread inside init:
  // the wait below polls and aborts at the deadline.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const cuda::stream_guard on_device(*s_->stream);
  const ncclResult_t result = api().init_rank_config(&s_->comm, ranks, unique, rank, &config);
  s_->check(result, "joining the group");
  s_->wait("joining the group", nullptr);
}

nccl_communicator::~nccl_communicator() {
  // Posted sends finish first (within the deadline; else the communicator is aborted): their
  // tensors go back to the pool only once no NCCL kernel reads them.
  if (s_->comm != nullptr && !s_->posted_sends.empty()) {
    try {
      wait_sends();
    } catch (const std::exception&) {
      // aborted: the stream is waited for below
    }
  }
  if (s_->comm != nullptr) {
    // A communicator that finished its work finalizes (flushes) and is destroyed; one whose
    // finalize does not complete in time is aborted.
    try {
      s_->check(api().finalize(s_->comm), "finalizing");
      s_->wait("finalizing", nullptr);
      api().destroy(s_->comm);
    } catch (const std::exception&) {
      // abort_with has aborted it already
    }
    s_->comm = nullptr;
  }
  if (!s_->posted_sends.empty() && s_->stream) {
    try {
      s_->stream->synchronize();  // an aborted communicator's kernels have ended
    } catch (const std::exception&) {
    }
  }
}

int nccl_communicator::ranks() const {
  return s_->ranks;
}
int nccl_communicator::rank() const {
  return s_->rank;
}
int nccl_communicator::ordinal() const {
  return s_->ordinal;
}
bool nccl_communicator::aborted() const {
  return s_->aborted;
}

void nccl_communicator::all_reduce_sum(tensor& values) {
  s_->require_on_device(values, "all_reduce's tensor");
  s_->run("all_reduce", [&](cudaStream_t stream) {
    s_->check(
        api().all_reduce(values.data(), values.data(), static_cast<std::size_t>(values.numel()),
                         nccl_type(values.type()), ncclSum, s_->comm, stream),
        "all_reduce");
  });
}

void nccl_communicator::reduce_scatter_sum(const tensor& in, tensor& out) {
  s_->require_on_device(in, "reduce_scatter's input");
  s_->require_on_device(out, "reduce_scatter's output");
  if (in.type() != out.type() || in.numel() != out.numel() * s_->ranks)
    fail("{}: reduce_scatter of {} into {}: the input holds ranks x the output", s_->name(),
         in.describe(), out.describe());
  s_->run("reduce_scatter", [&](cudaStream_t stream) {
    s_->check(api().reduce_scatter(in.data(), out.data(), static_cast<std::size_t>(out.numel()),
                                   nccl_type(in.type()), ncclSum, s_->comm, stream),
              "reduce_scatter");
  });
}

void nccl_communicator::all_gather(const tensor& in, tensor& out) {
  s_->require_on_device(in, "all_gather's input");
  s_->require_on_device(out, "all_gather's output");
  if (in.type() != out.type() || out.numel() != in.numel() * s_->ranks)
    fail("{}: all_gather of {} into {}: the output holds ranks x the input", s_->name(),
         in.describe(), out.describe());
  s_->run("all_gather", [&](cudaStream_t stream) {
    s_->check(api().all_gather(in.data(), out.data(), static_cast<std::size_t>(in.numel()),
                               nccl_type(in.type()), s_->comm, stream),
              "all_gather");
  });
}

void nccl_communicator::all_to_all(const tensor& in, std::span<const std::int64_t> send_rows,
                                   tensor& out, std::span<const std::int64_t> receive_rows) {
  const tensor ins[1] = {in};
  tensor outs[1] = {out};
  all_to_all(ins, send_rows, outs, receive_rows);
}

void nccl_communicator::all_to_all(std::span<const tensor> in,
                                   std::span<const std::int64_t> send_rows, std::span<tensor> out,
                                   std::span<const std::int64_t> receive_rows) {
  const auto ranks = static_cast<std::size_t>(s_->ranks);
  if (send_rows.size() != ranks || receive_rows.size() != ranks)
    fail("{}: all_to_all needs a row count per rank", s_->name());
  if (in.size() != out.size() || in.empty())
    fail("{}: all_to_all of {} inputs into {} outputs", s_->name(), in.size(), out.size());
  std::int64_t sent = 0, received = 0;
  for (std::size_t p = 0; p < ranks; ++p) {
    if (send_rows[p] < 0 || receive_rows[p] < 0)
      fail("{}: all_to_all with a negative row count for rank {}", s_->name(), p);
    sent += send_rows[p];
    received += receive_rows[p];
  }
  // A row: every dimension after the first (one element of a 1-D tensor); both sides alike.
  auto row_of = [](const tensor& t) {
    std::int64_t bytes = static_cast<std::int64_t>(size_of(t.type()));
    for (std::int64_t d = 1; d < t.dim(); ++d) bytes *= t.size(d);
    return bytes;
  };
  std::vector<std::int64_t> row_bytes(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    s_->require_on_device(in[i], "all_to_all's input");
    s_->require_on_device(out[i], "all_to_all's output");
    row_bytes[i] = row_of(in[i]);
    if (in[i].type() != out[i].type() || row_of(out[i]) != row_bytes[i])
      fail("{}: all_to_all from {} into {}: rows of another shape or dtype", s_->name(),
           in[i].describe(), out[i].describe());
    if (sent * row_bytes[i] > static_cast<std::int64_t>(in[i].nbytes()) ||
        received * row_bytes[i] > static_cast<std::int64_t>(out[i].nbytes()))
      fail("{}: all_to_all of {} rows from {} into {} rows of {}", s_->name(), sent,
           in[i].describe(), received, out[i].describe());
  }
  s_->run("all_to_all", [&](cudaStream_t stream) {
    // NOTES: grouped point-to-point calls: NCCL posts every send and receive of the group at once
    // (the sizes differ per peer, which ncclAllToAll cannot say).
    // A failure inside the group is checked after ncclGroupEnd: the group must be closed first.
    s_->check(api().group_start(), "all_to_all");
    ncclResult_t first_failure = ncclSuccess;
    auto note = [&](ncclResult_t r) {
      if (first_failure == ncclSuccess && r != ncclSuccess && r != ncclInProgress)
        first_failure = r;
    };
    for (std::size_t i = 0; i < in.size(); ++i) {
      std::int64_t send_at = 0, receive_at = 0;
      for (std::size_t p = 0; p < ranks; ++p) {
        const auto* from = static_cast<const std::uint8_t*>(in[i].data()) + send_at * row_bytes[i];
        auto* to = static_cast<std::uint8_t*>(out[i].data()) + receive_at * row_bytes[i];
        if (send_rows[p] > 0)
          note(api().send(from, static_cast<std::size_t>(send_rows[p] * row_bytes[i]), ncclUint8,
                          static_cast<int>(p), s_->comm, stream));
        if (receive_rows[p] > 0)
          note(api().recv(to, static_cast<std::size_t>(receive_rows[p] * row_bytes[i]), ncclUint8,
                          static_cast<int>(p), s_->comm, stream));
        send_at += send_rows[p];
        receive_at += receive_rows[p];
      }
    }
    const ncclResult_t ended = api().group_end();
    s_->check(first_failure, "all_to_all");
    s_->check(ended, "all_to_all");
  });
}

void nccl_communicator::send(const tensor& values, int peer) {
  s_->require_on_device(values, "send's tensor");
  s_->run(fmt::format("send to rank {}", peer), [&](cudaStream_t stream) {
    s_->check(api().send(values.data(), values.nbytes(), ncclUint8, peer, s_->comm, stream),
              "send");
  });
}

void nccl_communicator::post_send(const tensor& values, int peer) {
  s_->require_on_device(values, "send's tensor");
  s_->reap();
  const std::string what = fmt::format("send to rank {}", peer);
  cuda::event done = s_->launch(
      what,
      [&](cudaStream_t stream) {
        s_->check(api().send(values.data(), values.nbytes(), ncclUint8, peer, s_->comm, stream),
                  "send");
      },
      std::chrono::steady_clock::now());
  s_->posted_sends.push_back({what, std::move(done), values});
}

void nccl_communicator::wait_sends() {
  // NOTES: each send's deadline counts from here, not from its posting: a receiver may take a
  // pipeline bubble's time to come for it, which is no failure.
  if (s_->aborted && !s_->posted_sends.empty())
    fail("{}: waiting for posted sends after an earlier failure: {}", s_->name(), s_->aborted_why);
  const auto start = std::chrono::steady_clock::now();
  while (!s_->posted_sends.empty()) {
    s_->wait(s_->posted_sends.front().what, &s_->posted_sends.front().done, start);
    s_->posted_sends.pop_front();
  }
}

std::size_t nccl_communicator::sends_pending() {
  s_->reap();
  return s_->posted_sends.size();
}

void nccl_communicator::receive(tensor& values, int peer) {
  s_->require_on_device(values, "receive's tensor");
  s_->run(fmt::format("receive from rank {}", peer), [&](cudaStream_t stream) {
    s_->check(api().recv(values.data(), values.nbytes(), ncclUint8, peer, s_->comm, stream),
              "receive");
  });
}

}  // namespace troupe
