#include "runtime/control/http_client.hpp"

#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "runtime/core/error.hpp"

namespace troupe {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

/// Shuts the socket down when the deadline passes first (Asio's blocking reads ignore
/// SO_RCVTIMEO, so the wait is bounded from outside).
class deadline_guard {
 public:
  deadline_guard(int fd, int seconds)
      : thread_([this, fd, seconds] {
          std::unique_lock lock(mutex_);
          if (!done_.wait_for(lock, std::chrono::seconds(seconds), [this] { return finished_; })) {
            expired_ = true;
            ::shutdown(fd, SHUT_RDWR);
          }
        }) {}
  ~deadline_guard() {
    {
      std::lock_guard lock(mutex_);
      finished_ = true;
    }
    done_.notify_all();
    thread_.join();
  }
  bool expired() {
    std::lock_guard lock(mutex_);
    return expired_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable done_;
  bool finished_ = false, expired_ = false;
  std::thread thread_;
};

}  // namespace

http_response http_call(const std::string& url, const std::string& method,
                        const std::string& target, const std::string& token,
                        const std::string& body, int timeout_seconds) {
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) fail("{}: not an http:// URL", url);
  const std::string authority = url.substr(scheme.size());
  const auto colon = authority.rfind(':');
  if (colon == std::string::npos) fail("{}: the URL has no port", url);
  std::string host = authority.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  const std::string port = authority.substr(colon + 1);

  asio::io_context io;
  tcp::socket socket(io);
  boost::system::error_code ec;
  tcp::resolver resolver(io);
  const auto endpoints = resolver.resolve(host, port, ec);
  if (!ec) asio::connect(socket, endpoints, ec);
  if (ec) fail("{}: cannot connect: {} (is the job running?)", url, ec.message());

  http::request<http::string_body> request{http::string_to_verb(method), target, 11};
  request.set(http::field::host, authority);
  request.set(http::field::user_agent, "troupe ctl");
  if (!token.empty()) request.set(http::field::authorization, "Bearer " + token);
  request.set(http::field::content_type, "application/json");
  request.body() = body;
  request.prepare_payload();
  boost::beast::flat_buffer buffer;
  http::response<http::string_body> response;
  bool expired = false;
  {
    deadline_guard deadline(socket.native_handle(), timeout_seconds);
    http::write(socket, request, ec);
    if (!ec) http::read(socket, buffer, response, ec);
    expired = deadline.expired();
  }
  if (expired) fail("{}{}: no reply within {} s", url, target, timeout_seconds);
  if (ec) fail("{}{}: no reply: {}", url, target, ec.message());
  socket.shutdown(tcp::socket::shutdown_both, ec);
  return {static_cast<int>(response.result_int()), response.body()};
}

}  // namespace troupe
