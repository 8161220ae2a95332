#include "runtime/control/http_request.hpp"

#include <exception>

#include <fmt/format.h>
#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <nlohmann/json.hpp>

#include "runtime/control/request_parser.hpp"

namespace troupe {

namespace http = boost::beast::http;

namespace {

/// "8 KiB", "1 MiB", "1000 bytes".
std::string size_text(std::size_t bytes) {
  if (bytes != 0 && bytes % (1024 * 1024) == 0) return fmt::format("{} MiB", bytes >> 20);
  if (bytes != 0 && bytes % 1024 == 0) return fmt::format("{} KiB", bytes >> 10);
  return fmt::format("{} bytes", bytes);
}

}  // namespace

std::string error_json(const std::string& message) {
  // Bytes a client sent need not be UTF-8: replace, never throw.
  return nlohmann::json{{"error", message}}.dump(-1, ' ', false,
                                                 nlohmann::json::error_handler_t::replace);
}

void apply_limits(request_parser& parser, const http_limits& limits) {
  parser.header_limit(static_cast<std::uint32_t>(limits.header_limit));
  parser.body_limit(limits.body_limit);
}

http_request request_of(const request_parser& parser) {
  const auto& message = parser.get();
  http_request request;
  request.method = std::string(message.method_string());
  request.target = std::string(message.target());
  if (auto it = message.find(http::field::authorization); it != message.end())
    request.authorization = std::string(it->value());
  request.body = message.body();
  return request;
}

std::optional<http_reply> refusal(const boost::system::error_code& ec, const http_limits& limits) {
  // NOTES: end_of_stream and partial_message are the client closing before its request was
  // whole: nobody reads a reply then. need_more cannot reach here from a read.
  if (ec == http::error::end_of_stream || ec == http::error::partial_message) return std::nullopt;
  if (ec == http::error::header_limit)
    return http_reply{431, error_json(fmt::format("the request line and headers are over {}",
                                                  size_text(limits.header_limit)))};
  if (ec == http::error::body_limit)
    return http_reply{
        413, error_json(fmt::format("the request body is over {}", size_text(limits.body_limit)))};
  if (ec.category() == make_error_code(http::error::bad_method).category())
    return http_reply{400, error_json(fmt::format("malformed HTTP request: {}", ec.message()))};
  return std::nullopt;  // the socket failed
}

http_parse_result parse_http_request(std::string_view bytes, const http_limits& limits) {
  http_parse_result result;
  try {
    request_parser parser;
    apply_limits(parser, limits);
    parser.eager(true);
    boost::system::error_code ec;
    while (!parser.is_done() && result.consumed < bytes.size()) {
      const std::size_t used = parser.put(
          boost::asio::buffer(bytes.data() + result.consumed, bytes.size() - result.consumed), ec);
      result.consumed += used;
      if (ec == http::error::need_more) return result;  // incomplete
      if (ec) {
        result.refusal = refusal(ec, limits);
        if (!result.refusal)  // cannot be cut off here: the bytes are all there
          result.refusal = http_reply{400, error_json("malformed HTTP request: " + ec.message())};
        return result;
      }
      if (used == 0) break;
    }
    if (parser.is_done()) result.request = request_of(parser);
  } catch (const std::exception& e) {
    result.request.reset();
    result.refusal =
        http_reply{400, error_json(fmt::format("malformed HTTP request: {}", e.what()))};
  }
  return result;
}

bool same_secret(std::string_view given, std::string_view expected) {
  if (given.size() != expected.size()) return false;
  unsigned char difference = 0;
  for (std::size_t i = 0; i < given.size(); ++i)
    difference |= static_cast<unsigned char>(given[i] ^ expected[i]);
  return difference == 0;
}

}  // namespace troupe
