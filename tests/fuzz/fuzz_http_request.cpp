// libFuzzer target: the bytes a client sends the control endpoint, parsed as the server parses
// them (runtime/control/http_request.hpp: Beast's parser under the endpoint's limits). The parser
// never throws: a whole request, a refusal or "more bytes needed" is every outcome.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "runtime/control/http_request.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  troupe::http_limits small;
  small.header_limit = 512;
  small.body_limit = 1024;
  for (const troupe::http_limits& limits : {troupe::http_limits{}, small}) {
    const troupe::http_parse_result result = troupe::parse_http_request(bytes, limits);
    if (result.consumed > bytes.size()) __builtin_trap();
    if (result.request.has_value() && result.refusal.has_value()) __builtin_trap();
  }
  return 0;
}
