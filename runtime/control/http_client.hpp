#pragma once

// The client side of the control endpoint: one request, one reply (Boost.Beast underneath).

#include <string>

namespace troupe {

struct http_response {
  int status = 0;
  std::string body;
};

/// Sends `method target` with `body` (JSON) to `url` ("http://host:port") with a bearer token,
/// and waits up to `timeout_seconds` for the reply. Throws troupe::error naming the URL and the
/// cause when the endpoint cannot be reached or does not answer in time.
http_response http_call(const std::string& url, const std::string& method,
                        const std::string& target, const std::string& token,
                        const std::string& body, int timeout_seconds);

}  // namespace troupe
