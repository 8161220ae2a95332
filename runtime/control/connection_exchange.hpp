#pragma once

// http_server's side of http_exchange: what a handler thread and the I/O thread share about one
// connection.

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "runtime/control/http_request.hpp"

namespace troupe::http_server_detail {

/// What a handler thread and the I/O thread share about one connection: whether its client is
/// there, the callback for when it goes, and how far a streamed reply is behind.
class connection_exchange final : public http_exchange {
 public:
  /// `pump` has the I/O thread take the pieces sent (take_pieces), if the connection is open.
  connection_exchange(std::function<void()> pump, std::size_t backlog)
      : pump_(std::move(pump)), backlog_(backlog) {}

  bool client_gone() const override {
    std::lock_guard lock(mutex_);
    return gone_;
  }

  void on_client_gone(std::function<void()> f) override {
    {
      std::lock_guard lock(mutex_);
      if (!gone_) {
        on_gone_ = std::move(f);
        return;
      }
    }
    f();
  }

  void begin_stream(int status, std::string content_type) override {
    std::lock_guard lock(mutex_);
    if (streaming_) return;
    streaming_ = true;
    stream_status_ = status;
    stream_type_ = std::move(content_type);
    if (!queued_) {
      queued_ = true;
      pump_();  // the status line and headers go out now
    }
  }

  bool send(std::string_view piece) override {
    std::unique_lock lock(mutex_);
    if (!streaming_) throw std::logic_error("http_exchange::send before begin_stream");
    drained_.wait(lock, [&] { return gone_ || unsent_ <= backlog_; });
    if (gone_) return false;
    if (piece.empty()) return true;  // an empty chunk would end the reply
    unsent_ += piece.size();
    pieces_.emplace_back(piece);
    if (!queued_) {
      queued_ = true;
      pump_();
    }
    return true;
  }

  // The I/O thread's side.

  /// The client went (or the connection closed): wakes a waiting send, runs the callback once.
  void mark_gone() {
    std::function<void()> f;
    {
      std::lock_guard lock(mutex_);
      if (gone_) return;
      gone_ = true;
      f = std::move(on_gone_);
    }
    drained_.notify_all();
    if (f) f();
  }
  /// Pieces sent since the last call, for the connection to write.
  std::vector<std::string> take_pieces() {
    std::lock_guard lock(mutex_);
    queued_ = false;
    return std::exchange(pieces_, {});
  }
  /// `bytes` of the stream have gone out.
  void written(std::size_t bytes) {
    {
      std::lock_guard lock(mutex_);
      unsent_ -= std::min(unsent_, bytes);
    }
    drained_.notify_all();
  }
  /// Whether the handler began a stream, with its status and content type.
  std::optional<std::pair<int, std::string>> stream() const {
    std::lock_guard lock(mutex_);
    if (!streaming_) return std::nullopt;
    return std::make_pair(stream_status_, stream_type_);
  }

 private:
  const std::function<void()> pump_;
  const std::size_t backlog_;
  mutable std::mutex mutex_;
  std::condition_variable drained_;
  bool gone_ = false, streaming_ = false, queued_ = false;
  int stream_status_ = 200;
  std::string stream_type_;
  std::function<void()> on_gone_;
  std::vector<std::string> pieces_;
  std::size_t unsent_ = 0;
};

}  // namespace troupe::http_server_detail
