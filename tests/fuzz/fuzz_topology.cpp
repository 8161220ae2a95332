// libFuzzer target: a topology file and `--set` overrides, as `troupe topo check` reads them
// (runtime/topology: TOML, the schema, the overrides, the meaning). The input's lines that start
// with "--set " are overrides; the rest is the file. Plugins are not looked up (no disk access
// beyond a model config the topology names). Anything but troupe::error is a bug.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "runtime/topology/load.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  troupe::topology_load_options options;
  options.resolve_plugins = false;
  std::string file;
  std::size_t start = 0;
  while (start <= input.size()) {
    const std::size_t end = std::min(input.find('\n', start), input.size());
    const std::string_view line = input.substr(start, end - start);
    if (line.substr(0, 6) == "--set ")
      options.overrides.emplace_back(line.substr(6));
    else
      file.append(line).push_back('\n');
    start = end + 1;
  }
  try {
    (void)troupe::load_topology_text(file, "/nonexistent/fuzz.toml", options);
  } catch (const troupe::error&) {
  }
  return 0;
}
