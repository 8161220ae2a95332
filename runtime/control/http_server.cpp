#include "runtime/control/http_server.hpp"

#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <list>
#include <mutex>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"

namespace troupe {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {

/// Connections served at once; more are closed at once (the endpoint is for a few operators).
constexpr std::size_t max_connections = 32;

std::string error_body(const std::string& message) {
  return nlohmann::json{{"error", message}}.dump();
}

}  // namespace

struct http_server::state {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::string host;
  int port = 0;
  handler on_request;
  // A client must send its whole request within this time: one that connects and sends
  // nothing, or trickles, must not hold a thread.
  std::chrono::milliseconds request_deadline{0};
  std::thread accept_thread, watchdog_thread;

  struct connection {
    tcp::socket socket;
    clock_type::time_point deadline;
    bool reading = true;  // until the request is read: the watchdog may cut it
    bool done = false;    // the socket is closed; the thread is ending
    std::thread thread;
  };
  std::mutex mutex;
  std::condition_variable stop_watchdog;
  std::list<connection> connections;
  bool stopping = false;

  void accept_loop() {
    for (;;) {
      tcp::socket socket(io);
      boost::system::error_code ec;
      acceptor.accept(socket, ec);
      std::unique_lock lock(mutex);
      if (stopping) return;
      reap();
      if (ec) {
        // Out of descriptors (EMFILE) or a connection that went away: give finished
        // connections time to let go, then go on.
        lock.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      if (connections.size() >= max_connections) {
        socket.close(ec);
        continue;
      }
      auto& c = connections.emplace_back(
          connection{std::move(socket), clock_type::now() + request_deadline, true, false, {}});
      try {
        c.thread = std::thread([this, &c] { serve(c); });
      } catch (const std::system_error&) {
        c.socket.close(ec);  // no thread to be had: refuse this one, keep serving
        connections.pop_back();
      }
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

  /// Cuts connections still reading their request past the deadline.
  void watchdog_loop() {
    std::unique_lock lock(mutex);
    while (!stopping) {
      stop_watchdog.wait_for(
          lock, std::min<std::chrono::milliseconds>(request_deadline / 4, std::chrono::seconds(1)));
      const auto now = clock_type::now();
      for (auto& c : connections)
        if (c.reading && !c.done && now > c.deadline)
          ::shutdown(c.socket.native_handle(), SHUT_RD);  // the reader wakes; a 400 goes out
    }
  }

  void serve(connection& c) {
    boost::system::error_code ec;
    boost::beast::flat_buffer buffer;
    http::request_parser<http::string_body> parser;
    parser.body_limit(1 << 20);
    http::read(c.socket, buffer, parser, ec);
    {
      std::lock_guard lock(mutex);
      c.reading = false;
    }
    http_reply reply;
    unsigned version = 11;
    if (ec == http::error::body_limit) {
      reply = {413, error_body("the request body is over 1 MiB")};
    } else if (ec) {
      reply = {400, error_body(fmt::format("no complete HTTP request within {} ms",
                                           request_deadline.count()))};
    } else {
      const auto& message = parser.get();
      version = message.version();
      http_request request;
      request.method = std::string(message.method_string());
      request.target = std::string(message.target());
      if (auto it = message.find(http::field::authorization); it != message.end())
        request.authorization = std::string(it->value());
      request.body = message.body();
      const auto remote = c.socket.remote_endpoint(ec);
      request.peer = ec ? std::string("unknown")
                        : remote.address().to_string() + ":" + std::to_string(remote.port());
      try {
        reply = on_request(request);
      } catch (const std::exception& e) {
        reply = {500, error_body(std::string("internal error: ") + e.what())};
      }
    }
    http::response<http::string_body> response{static_cast<http::status>(reply.status), version};
    response.set(http::field::server, "troupe");
    response.set(http::field::content_type, "application/json");
    response.keep_alive(false);
    response.body() = reply.body + "\n";
    response.prepare_payload();
    http::write(c.socket, response, ec);
    if (reply.status == 413) {
      // The client may still be sending the body: read it away (for a while) before closing,
      // or the close resets the connection and the client never sees the 413.
      c.socket.shutdown(tcp::socket::shutdown_send, ec);
      {
        std::lock_guard lock(mutex);
        c.reading = true;
        c.deadline = clock_type::now() + request_deadline;
      }
      char sink[65536];
      while (!ec) c.socket.read_some(asio::buffer(sink), ec);
    }
    std::lock_guard lock(mutex);
    c.socket.shutdown(tcp::socket::shutdown_both, ec);
    c.socket.close(ec);
    c.done = true;
  }
};

http_server::http_server(const std::string& host, int port, handler on_request,
                         std::chrono::milliseconds request_deadline)
    : state_(std::make_unique<state>()) {
  state_->host = host;
  state_->request_deadline = request_deadline;
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
  state_->watchdog_thread = std::thread([s = state_.get()] { s->watchdog_loop(); });
}

http_server::~http_server() {
  {
    std::lock_guard lock(state_->mutex);
    state_->stopping = true;
    // Wakes the blocked accept() and any connection still reading.
    ::shutdown(state_->acceptor.native_handle(), SHUT_RDWR);
    for (auto& c : state_->connections)
      if (!c.done) ::shutdown(c.socket.native_handle(), SHUT_RDWR);
  }
  state_->stop_watchdog.notify_all();
  state_->accept_thread.join();
  state_->watchdog_thread.join();
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
  const bool ipv6 = state_->host.find(':') != std::string::npos;
  return fmt::format("http://{}{}{}:{}", ipv6 ? "[" : "", state_->host, ipv6 ? "]" : "",
                     state_->port);
}

}  // namespace troupe
