#pragma once

// The Beast request parser of the control endpoint, set up and read the one way that the server
// (runtime/control/http_server.cpp) and parse_http_request (http_request.hpp) share.

#include <optional>

#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/system/error_code.hpp>

#include "runtime/control/http_request.hpp"

namespace troupe {

using request_parser = boost::beast::http::request_parser<boost::beast::http::string_body>;

/// Applies the header and body limits of `limits` to a fresh parser.
void apply_limits(request_parser& parser, const http_limits& limits);

/// The request's method, target, Authorization header and body so far (peer left empty).
http_request request_of(const request_parser& parser);

/// The reply to a request the parser (or the reading) failed with `ec`: 400 naming the cause
/// for a malformed request, 413 for a body over the limit, 431 for headers over it. Nothing for
/// a request cut off (the client went away: there is no one to tell) or a failed socket.
std::optional<http_reply> refusal(const boost::system::error_code& ec, const http_limits& limits);

/// {"error": message} as a JSON text.
std::string error_json(const std::string& message);

}  // namespace troupe
