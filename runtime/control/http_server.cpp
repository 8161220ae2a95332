#include "runtime/control/http_server.hpp"

#include <array>
#include <condition_variable>
#include <deque>
#include <exception>
#include <list>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>

#include "runtime/control/connection_exchange.hpp"
#include "runtime/control/handler_threads.hpp"
#include "runtime/control/request_parser.hpp"
#include "runtime/core/error.hpp"

namespace troupe {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

// NOTES: a named namespace rather than an anonymous one: http_server::state (external linkage)
// holds a handler_threads, which GCC flags (-Wsubobject-linkage) once a unity build includes
// this file into another.
namespace http_server_detail {

/// The handler's reply, or 500 for what it threw.
template <typename Function>
http_reply answer(const Function& function, const http_request& request) {
  try {
    return function(request);
  } catch (const std::exception& e) {
    return {500, error_json(std::string("internal error: ") + e.what())};
  } catch (...) {
    return {500, error_json("internal error")};
  }
}

}  // namespace http_server_detail

using http_server_detail::answer;
using exchange = http_server_detail::connection_exchange;
using http_server_detail::handler_threads;

// NOTES: everything below but the handler threads runs on the I/O thread (the one running
// `io`), so the connections and their list need no lock; a handler thread hands its reply back
// with asio::post, which orders it after the request it answers.
struct http_server::state {
  class connection;

  explicit state(const http_limits& l) : limits(l), handlers(l.max_handlers) {}

  void accept();
  void admit(tcp::socket socket);
  /// Closes the oldest connection that is expendable (still in its headers, or lingering after
  /// its reply); false when there is none.
  bool drop_oldest();
  /// Stopping, first: no more connections; those not waiting for a handler or writing its
  /// reply are closed.
  void begin_stop();
  /// Then, once the handler threads are gone (their replies posted before this): the replies
  /// still being written get `final_replies` more, then the I/O thread ends.
  void finish_stop();

  asio::io_context io;
  // Keeps io.run() going while a handler has a request and no I/O is pending; only
  // finish_stop() ends it (io.stop()).
  asio::executor_work_guard<asio::io_context::executor_type> busy{io.get_executor()};
  tcp::acceptor acceptor{io};
  asio::steady_timer accept_retry{io};
  std::string host;
  int port = 0;
  handler on_request;
  screen on_headers;
  const http_limits limits;
  handler_threads handlers;
  std::list<std::shared_ptr<connection>> connections;  // oldest first
  asio::steady_timer final_replies{io};
  bool stopping = false;          // begin_stop() has run
  bool stopping_accepts = false;  // stop_accepting() has run
  bool draining = false;          // finish_stop() has run: the last connection closed ends the I/O
  std::thread io_thread;
};

class http_server::state::connection : public std::enable_shared_from_this<connection> {
 public:
  connection(state& server, tcp::socket socket)
      : server_(server), socket_(std::move(socket)), deadline_(server.io) {}

  void start() {
    error_code ec;
    const auto remote = socket_.remote_endpoint(ec);
    peer_ = ec ? std::string("unknown")
               : remote.address().to_string() + ":" + std::to_string(remote.port());
    apply_limits(parser_, server_.limits);
    arm(server_.limits.header_deadline);
    http::async_read_header(
        socket_, buffer_, parser_,
        [self = shared_from_this()](error_code e, std::size_t) { self->on_headers(e); });
  }

  /// Closes the socket now, whatever the request's progress; it leaves the server's list.
  void close() {
    if (phase_ == phase::closed) return;
    const auto self = shared_from_this();  // the list may hold the last reference
    phase_ = phase::closed;
    error_code ec;
    deadline_.cancel();
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    server_.connections.erase(place);
    if (exchange_) exchange_->mark_gone();
    if (server_.draining && server_.connections.empty()) server_.io.stop();
  }

  bool expendable() const { return phase_ == phase::headers || phase_ == phase::lingering; }
  /// With a handler, or writing a reply: a stopping server lets it finish.
  bool answering() const {
    return phase_ == phase::handling || phase_ == phase::streaming || phase_ == phase::replying;
  }

  std::list<std::shared_ptr<connection>>::iterator place;  ///< in server.connections

 private:
  enum class phase { headers, body, handling, streaming, replying, lingering, closed };

  http_request request() const {
    http_request r = request_of(parser_);
    r.peer = peer_;
    r.exchange = exchange_;
    return r;
  }

  void on_headers(error_code ec) {
    if (phase_ != phase::headers) return;  // cut by the deadline, or closed
    if (ec) return refuse(ec);
    if (server_.on_headers) {
      const http_request head = request();
      std::optional<http_reply> early;
      try {
        early = server_.on_headers(head);
      } catch (const std::exception& e) {
        early = http_reply{500, error_json(std::string("internal error: ") + e.what())};
      }
      if (early) return reply(*early);
    }
    if (parser_.is_done()) return handle();
    phase_ = phase::body;
    arm(server_.limits.body_deadline);
    const auto& message = parser_.get();
    if (message.version() >= 11 &&
        boost::beast::iequals(message[http::field::expect], "100-continue")) {
      // The client waits for this before it sends its body (curl does, for large ones).
      static constexpr std::string_view go_on = "HTTP/1.1 100 Continue\r\n\r\n";
      asio::async_write(socket_, asio::buffer(go_on.data(), go_on.size()),
                        [self = shared_from_this()](error_code e, std::size_t) {
                          if (self->phase_ != phase::body) return;
                          if (e) return self->close();
                          self->read_body();
                        });
    } else {
      read_body();
    }
  }

  void read_body() {
    http::async_read(socket_, buffer_, parser_,
                     [self = shared_from_this()](error_code ec, std::size_t) {
                       if (self->phase_ != phase::body) return;
                       if (ec) return self->refuse(ec);
                       self->handle();
                     });
  }

  /// Answers a request the parser or the reading failed, or closes when no one would read it.
  void refuse(error_code ec) {
    if (auto reply_to = refusal(ec, server_.limits)) return reply(*reply_to);
    close();
  }

  /// Hands the whole request to a handler thread; its reply comes back to the I/O thread.
  void handle() {
    phase_ = phase::handling;
    deadline_.cancel();
    auto& io = server_.io;
    exchange_ = std::make_shared<exchange>(
        [weak = weak_from_this(), &io] {
          asio::post(io, [weak] {
            if (const auto self = weak.lock()) self->pump();
          });
        },
        server_.limits.stream_backlog);
    auto task = [self = shared_from_this(), request = request()]() mutable {
      http_reply reply = answer(self->server_.on_request, request);
      request = {};  // the handler's copy of the exchange goes before the connection's
      auto& context = self->server_.io;
      asio::post(context, [self = std::move(self), reply = std::move(reply)] {
        if (self->exchange_->stream())
          self->end_stream();
        else
          self->reply(reply);
      });
    };
    if (!server_.handlers.run(std::move(task)))
      return reply({503, error_json(fmt::format("{} requests are being handled already; try "
                                                "again when one has finished",
                                                server_.limits.max_handlers))});
    watch();
  }

  /// While a handler works, a read that ends when the client closes the connection.
  void watch() {
    socket_.async_read_some(
        asio::buffer(sink_), [self = shared_from_this()](error_code ec, std::size_t) {
          if (self->phase_ != phase::handling && self->phase_ != phase::streaming) return;
          if (ec == asio::error::operation_aborted) return;
          if (ec) return self->close();  // the client went: nobody would read the reply
          self->watch();                 // bytes after the request: not ours to read
        });
  }

  /// Takes the pieces of a streamed reply its handler sent, and writes them.
  void pump() {
    if (phase_ != phase::handling && phase_ != phase::streaming) return;
    start_stream();
    for (std::string& piece : exchange_->take_pieces()) {
      const std::size_t bytes = piece.size();
      if (chunked_) piece = fmt::format("{:x}\r\n{}\r\n", bytes, piece);
      out_.emplace_back(std::move(piece), bytes);
    }
    write_next();
  }

  /// The status line and headers of a streamed reply, once.
  void start_stream() {
    if (phase_ != phase::handling) return;
    phase_ = phase::streaming;
    const auto [status, type] = *exchange_->stream();
    const unsigned version = parser_.get().version();
    chunked_ = version >= 11;
    out_.emplace_back(
        fmt::format("HTTP/{}.{} {} {}\r\nServer: troupe\r\nContent-Type: {}\r\nCache-Control: "
                    "no-cache\r\n{}Connection: close\r\n\r\n",
                    version / 10, version % 10, status,
                    std::string(http::obsolete_reason(static_cast<http::status>(status))), type,
                    chunked_ ? "Transfer-Encoding: chunked\r\n" : ""),
        0);
  }

  /// The handler of a streamed reply returned: the last chunk, then the close.
  void end_stream() {
    if (phase_ != phase::handling && phase_ != phase::streaming) return;
    pump();
    if (chunked_) out_.emplace_back("0\r\n\r\n", 0);
    stream_ended_ = true;
    write_next();
  }

  void write_next() {
    if (writing_ || phase_ != phase::streaming) return;
    if (out_.empty()) {
      if (!stream_ended_) {
        deadline_.cancel();  // the handler has nothing to say yet
        return;
      }
      if (server_.stopping) return close();
      return linger();
    }
    writing_ = true;
    arm(server_.limits.reply_deadline);
    asio::async_write(socket_, asio::buffer(out_.front().first),
                      [self = shared_from_this()](error_code e, std::size_t) {
                        self->writing_ = false;
                        if (self->phase_ != phase::streaming) return;
                        if (e) return self->close();
                        self->exchange_->written(self->out_.front().second);
                        self->out_.pop_front();
                        self->write_next();
                      });
  }

  void reply(const http_reply& r) {
    if (phase_ == phase::replying || phase_ == phase::lingering || phase_ == phase::closed) return;
    phase_ = phase::replying;
    error_code ec;
    socket_.cancel(ec);  // a read still waiting for the request ends here
    const unsigned version = parser_.is_header_done() ? parser_.get().version() : 11;
    response_ = {static_cast<http::status>(r.status), version};
    response_.set(http::field::server, "troupe");
    response_.set(http::field::content_type, r.content_type);
    response_.keep_alive(false);
    response_.body() = r.content_type == "application/json" ? r.body + "\n" : r.body;
    response_.prepare_payload();
    arm(server_.limits.reply_deadline);
    http::async_write(socket_, response_, [self = shared_from_this()](error_code e, std::size_t) {
      if (self->phase_ != phase::replying) return;
      if (e || self->server_.stopping) return self->close();
      self->linger();
    });
  }

  /// Reads away what the client still sends (a body nobody wanted) until it closes, then closes.
  void linger() {
    phase_ = phase::lingering;
    error_code ec;
    socket_.cancel(ec);  // a watch() still reading
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    arm(server_.limits.linger);
    read_away();
  }

  void read_away() {
    socket_.async_read_some(asio::buffer(sink_),
                            [self = shared_from_this()](error_code ec, std::size_t) {
                              if (self->phase_ != phase::lingering) return;
                              if (ec) return self->close();
                              self->read_away();
                            });
  }

  /// The current phase must be over by `after` from now.
  void arm(std::chrono::milliseconds after) {
    deadline_.expires_after(after);
    deadline_.async_wait([self = shared_from_this()](error_code ec) {
      // NOTES: a deadline that expired just as it was moved may still arrive: only the one
      // that is due now counts.
      if (ec || self->deadline_.expiry() > asio::steady_timer::clock_type::now()) return;
      self->on_deadline();
    });
  }

  void on_deadline() {
    const auto& limits = server_.limits;
    switch (phase_) {
      case phase::headers:
        return reply({408, error_json(fmt::format("no complete request line and headers within "
                                                  "{} ms",
                                                  limits.header_deadline.count()))});
      case phase::body:
        return reply({408, error_json(fmt::format("the request body did not come within {} ms",
                                                  limits.body_deadline.count()))});
      case phase::streaming:
      case phase::replying:
      case phase::lingering:
        return close();
      case phase::handling:
      case phase::closed:
        return;
    }
  }

  state& server_;
  tcp::socket socket_;
  asio::steady_timer deadline_;
  boost::beast::flat_buffer buffer_;
  request_parser parser_;
  http::response<http::string_body> response_;
  std::string peer_;
  std::array<char, 4096> sink_{};
  phase phase_ = phase::headers;
  std::shared_ptr<exchange> exchange_;  ///< from handle() on
  // A streamed reply: what is still to write (bytes, and the handler's bytes among them).
  std::deque<std::pair<std::string, std::size_t>> out_;
  bool chunked_ = false, writing_ = false, stream_ended_ = false;
};

void http_server::state::accept() {
  acceptor.async_accept([this](error_code ec, tcp::socket socket) {
    if (stopping || stopping_accepts || ec == asio::error::operation_aborted) return;
    if (!ec) {
      accept();  // first: whatever admit() meets, the server goes on accepting
      return admit(std::move(socket));
    }
    if (ec != asio::error::no_descriptors && ec != asio::error::no_buffer_space &&
        ec != asio::error::no_memory && ec != boost::system::errc::too_many_files_open_in_system)
      return accept();  // a client that went away before its accept
    // Out of descriptors: free one and try again shortly.
    drop_oldest();
    accept_retry.expires_after(std::chrono::milliseconds(50));
    accept_retry.async_wait([this](error_code e) {
      if (!e && !stopping && !stopping_accepts) accept();
    });
  });
}

void http_server::state::admit(tcp::socket socket) {
  if (connections.size() >= limits.max_connections && !drop_oldest()) {
    error_code ec;
    socket.close(ec);  // every connection is past its headers: this one waits its turn
    return;
  }
  auto c = std::make_shared<connection>(*this, std::move(socket));
  c->place = connections.insert(connections.end(), c);
  c->start();
}

bool http_server::state::drop_oldest() {
  for (const auto& c : connections)
    if (c->expendable()) {
      c->close();
      return true;
    }
  return false;
}

void http_server::state::begin_stop() {
  stopping = true;
  error_code ec;
  acceptor.close(ec);
  accept_retry.cancel();
  for (auto it = connections.begin(); it != connections.end();) {
    const auto c = *it++;  // close() takes c out of the list
    if (!c->answering()) c->close();
  }
}

void http_server::state::finish_stop() {
  draining = true;
  if (connections.empty()) return io.stop();
  final_replies.expires_after(std::chrono::seconds(1));
  final_replies.async_wait([this](error_code ec) {
    if (ec) return;
    while (!connections.empty()) connections.front()->close();  // the last one stops the I/O
  });
}

http_server::http_server(const std::string& host, int port, handler on_request, http_limits limits,
                         screen on_headers)
    : state_(std::make_unique<state>(limits)) {
  state_->host = host;
  state_->on_request = std::move(on_request);
  state_->on_headers = std::move(on_headers);
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) fail("control endpoint {}:{}: '{}' is not an IP address", host, port, host);
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
  state_->acceptor.open(endpoint.protocol(), ec);
  if (!ec) state_->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) state_->acceptor.bind(endpoint, ec);
  if (!ec) state_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) fail("control endpoint {}:{}: cannot listen: {}", host, port, ec.message());
  state_->port = state_->acceptor.local_endpoint().port();
  state_->accept();
  state_->io_thread = std::thread([s = state_.get()] {
    for (;;) {
      try {
        s->io.run();
        return;
      } catch (const std::exception&) {
        // A handler threw (out of memory, say): the others go on being served.
      }
    }
  });
}

http_server::~http_server() {
  state* s = state_.get();
  asio::post(s->io, [s] { s->begin_stop(); });
  // NOTES: a handler thread posts its reply before it ends, so every reply is queued on the I/O
  // thread before finish_stop() is: a request with a handler gets its answer.
  s->handlers.stop();
  asio::post(s->io, [s] { s->finish_stop(); });
  s->io_thread.join();
  // The I/O thread is gone, so the list is ours; what the connections' pending handlers hold
  // goes with the io_context, which never runs them now.
  s->connections.clear();
}

void http_server::stop_accepting() {
  state* s = state_.get();
  asio::post(s->io, [s] {
    s->stopping_accepts = true;
    error_code ec;
    s->acceptor.close(ec);
    s->accept_retry.cancel();
  });
}

int http_server::port() const {
  return state_->port;
}

std::string http_server::url() const {
  const bool ipv6 = state_->host.find(':') != std::string::npos;
  return fmt::format("http://{}{}{}:{}", ipv6 ? "[" : "", state_->host, ipv6 ? "]" : "",
                     state_->port);
}

}  // namespace troupe
