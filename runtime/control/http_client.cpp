#include "runtime/control/http_client.hpp"

#include <sys/socket.h>
#include <sys/time.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "runtime/core/error.hpp"

namespace troupe {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

http_response http_call(const std::string& url, const std::string& method,
                        const std::string& target, const std::string& token,
                        const std::string& body, int timeout_seconds) {
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) fail("{}: not an http:// URL", url);
  const std::string authority = url.substr(scheme.size());
  const auto colon = authority.rfind(':');
  if (colon == std::string::npos) fail("{}: the URL has no port", url);
  const std::string host = authority.substr(0, colon);
  const std::string port = authority.substr(colon + 1);

  asio::io_context io;
  tcp::socket socket(io);
  boost::system::error_code ec;
  tcp::resolver resolver(io);
  const auto endpoints = resolver.resolve(host, port, ec);
  if (!ec) asio::connect(socket, endpoints, ec);
  if (ec) fail("{}: cannot connect: {} (is the job running?)", url, ec.message());
  timeval limit{timeout_seconds, 0};
  ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
  ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));

  http::request<http::string_body> request{http::string_to_verb(method), target, 11};
  request.set(http::field::host, authority);
  request.set(http::field::user_agent, "troupe ctl");
  if (!token.empty()) request.set(http::field::authorization, "Bearer " + token);
  request.set(http::field::content_type, "application/json");
  request.body() = body;
  request.prepare_payload();
  http::write(socket, request, ec);
  if (ec) fail("{}: cannot send the request: {}", url, ec.message());

  boost::beast::flat_buffer buffer;
  http::response<http::string_body> response;
  http::read(socket, buffer, response, ec);
  if (ec == asio::error::would_block || ec == asio::error::timed_out)
    fail("{}{}: no reply within {} s", url, target, timeout_seconds);
  if (ec) fail("{}{}: cannot read the reply: {}", url, target, ec.message());
  socket.shutdown(tcp::socket::shutdown_both, ec);
  return {static_cast<int>(response.result_int()), response.body()};
}

}  // namespace troupe
