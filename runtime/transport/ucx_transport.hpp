#pragma once

// Tensors between processes over UCX (UCP active messages). One worker per process, driven by
// one progress loop (run(), which the cluster runs in a detached actor); every other thread
// hands work to that loop through a queue, so the worker runs in UCX's single-thread mode.
//
// A tensor travels as one active message: a small header (sender rank, tag, dtype, shape)
// and the tensor's bytes. UCX picks eager (small: copied once into the receiving tensor) or
// rendezvous (large: received straight into a tensor allocated from the header, no extra
// copy). The receiver matches arrivals to expectations by (sender, tag), in any order.
//
// NOTES: UCX 1.13's rules this class follows:
//  - the active-message header must stay valid until the send completes: it lives in the
//    send's own heap record with the tensor it sends, both freed by the completion callback;
//  - endpoints use peer error handling (a dead peer fails its sends instead of hanging them),
//    which silently drops shared-memory transports unless UCX_MM_ERROR_HANDLING=y: the
//    constructor sets it (and the posix/sysv forms) unless the user did;
//  - both sides must progress: the loop polls the worker and sleeps on its event fd only after
//    `spin` without events.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/tensor/tensor.hpp"

namespace troupe {

struct ucx_options {
  /// How long the loop keeps polling after the last event before it sleeps on the worker's
  /// event fd: latency against CPU time (CPU jobs share their cores with compute).
  std::chrono::microseconds spin{200};
  /// Sends in flight per peer; more wait in a queue. Thousands of outstanding rendezvous sends
  /// cost UCX (and the shared-memory transports) most of their bandwidth.
  int max_in_flight = 8;
  /// Bytes in flight per peer (one send always goes, however big): large tensors one after
  /// another stream through the caches better than side by side.
  std::size_t max_bytes_in_flight = 4u << 20;
};

class ucx_transport {
 public:
  /// Called once a send is done: "" on success, else what went wrong.
  using send_done = std::function<void(const std::string& failure)>;
  using arrival = std::function<void(tensor value)>;
  /// Called (in the progress loop) when UCX reports a peer's endpoint as failed.
  using failure_handler = std::function<void(int peer, const std::string& why)>;

  /// A UCP context and worker for process `rank`. Throws troupe::error when UCX cannot start.
  explicit ucx_transport(int rank, ucx_options options = {});
  /// Stops the loop (close()) and frees the worker; call after run() returned.
  ~ucx_transport();
  ucx_transport(const ucx_transport&) = delete;
  ucx_transport& operator=(const ucx_transport&) = delete;

  int rank() const { return rank_; }
  /// This worker's address, for peers to connect to (it travels through the control plane).
  const std::vector<std::uint8_t>& address() const { return address_; }

  /// Connects to `peer` at its worker address. Thread-safe; takes effect in the loop.
  void connect(int peer, std::vector<std::uint8_t> address);
  /// Sends `value` (host memory; made contiguous if it is not) to `peer` under `tag`; the
  /// tensor is kept alive until UCX is done with it. Thread-safe.
  void send(int peer, std::uint64_t tag, tensor value, send_done done = {});
  /// Calls `on_arrival` in the loop once the tensor `peer` sent under `tag` is here (at once if
  /// it already is). Each (peer, tag) arrives once. Thread-safe.
  void expect(int peer, std::uint64_t tag, arrival on_arrival);
  void on_failure(failure_handler handler);

  /// The progress loop: returns after close(). Run it in exactly one thread.
  void run();
  /// Ends run() and fails sends still in flight. Thread-safe, idempotent.
  void close();

  /// Transfers completed since construction (both directions), for metrics and tests.
  std::uint64_t sent_count() const;
  std::uint64_t received_count() const;

  struct state;

 private:
  int rank_;
  std::vector<std::uint8_t> address_;
  std::unique_ptr<state> state_;
};

}  // namespace troupe
