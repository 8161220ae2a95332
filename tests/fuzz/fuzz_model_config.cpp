// libFuzzer target: a model's config.json as troupe reads it (runtime/core/input_limits.cpp's
// JSON reader, then runtime/model/model_config.cpp). Anything but troupe::error is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <nlohmann/json.hpp>

#include "runtime/core/input_limits.hpp"
#include "runtime/model/model_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const troupe::model_config config =
        troupe::parse_model_config(troupe::parse_json(text, "config.json"), "config.json");
    (void)troupe::complete_json(config);
    (void)config.parameter_count();
  } catch (const troupe::error&) {
  }
  return 0;
}
