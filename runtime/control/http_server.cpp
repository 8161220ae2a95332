#include "runtime/control/http_server.hpp"

#include <sys/socket.h>
#include <sys/time.h>

#include <list>
#include <mutex>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "runtime/core/error.hpp"

namespace troupe {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

/// A client that opens a connection and sends nothing must not hold a thread forever.
constexpr int idle_seconds = 30;

void set_timeouts(tcp::socket& socket) {
  timeval limit{idle_seconds, 0};
  ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
  ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
}

}  // namespace

struct http_server::state {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::string host;
  int port = 0;
  handler on_request;
  std::thread accept_thread;

  struct connection {
    tcp::socket socket;
    std::thread thread;
    bool done = false;
  };
  std::mutex mutex;
  std::list<connection> connections;
  bool stopping = false;

  void accept_loop() {
    for (;;) {
      tcp::socket socket(io);
      boost::system::error_code ec;
      acceptor.accept(socket, ec);
      std::lock_guard lock(mutex);
      if (stopping) return;
      if (ec) continue;
      reap();
      set_timeouts(socket);
      auto& c = connections.emplace_back(connection{std::move(socket), {}, false});
      c.thread = std::thread([this, &c] { serve(c); });
    }
  }

  /// Joins the threads of finished connections (the mutex is held).
  void reap() {
    for (auto it = connections.begin(); it != connections.end();) {
      if (!it->done) {
        ++it;
        continue;
      }
      it->thread.join();
      it = connections.erase(it);
    }
  }

  void serve(connection& c) {
    boost::system::error_code ec;
    boost::beast::flat_buffer buffer;
    http::request_parser<http::string_body> parser;
    parser.body_limit(1 << 20);
    http::read(c.socket, buffer, parser, ec);
    if (!ec) {
      const auto& message = parser.get();
      http_request request;
      request.method = std::string(message.method_string());
      request.target = std::string(message.target());
      if (auto it = message.find(http::field::authorization); it != message.end())
        request.authorization = std::string(it->value());
      request.body = message.body();
      const auto remote = c.socket.remote_endpoint(ec);
      request.peer = ec ? std::string("unknown")
                        : remote.address().to_string() + ":" + std::to_string(remote.port());
      http_reply reply;
      try {
        reply = on_request(request);
      } catch (const std::exception& e) {
        reply = {500, std::string(R"({"error": "internal error"})")};
      }
      http::response<http::string_body> response{static_cast<http::status>(reply.status),
                                                 message.version()};
      response.set(http::field::server, "troupe");
      response.set(http::field::content_type, "application/json");
      response.keep_alive(false);
      response.body() = reply.body + "\n";
      response.prepare_payload();
      http::write(c.socket, response, ec);
    }
    c.socket.shutdown(tcp::socket::shutdown_both, ec);
    std::lock_guard lock(mutex);
    c.done = true;
  }
};

http_server::http_server(const std::string& host, int port, handler on_request)
    : state_(std::make_unique<state>()) {
  state_->host = host;
  state_->on_request = std::move(on_request);
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
  state_->accept_thread = std::thread([s = state_.get()] { s->accept_loop(); });
}

http_server::~http_server() {
  {
    std::lock_guard lock(state_->mutex);
    state_->stopping = true;
    // Wakes the blocked accept() and any connection still reading.
    ::shutdown(state_->acceptor.native_handle(), SHUT_RDWR);
    for (auto& c : state_->connections) ::shutdown(c.socket.native_handle(), SHUT_RDWR);
  }
  state_->accept_thread.join();
  std::list<state::connection> left;
  {
    std::lock_guard lock(state_->mutex);
    left.swap(state_->connections);
  }
  for (auto& c : left) c.thread.join();
  boost::system::error_code ec;
  state_->acceptor.close(ec);
}

int http_server::port() const {
  return state_->port;
}

std::string http_server::url() const {
  return fmt::format("http://{}:{}", state_->host, state_->port);
}

}  // namespace troupe
