#include "runtime/plugin/load_error.hpp"

namespace troupe {

std::string_view name_of(plugin_load_failure failure) {
  switch (failure) {
    case plugin_load_failure::not_found:
      return "not found";
    case plugin_load_failure::not_a_file:
      return "not a plugin file";
    case plugin_load_failure::not_loadable:
      return "not a loadable library";
    case plugin_load_failure::missing_entry:
      return "missing entry symbol";
    case plugin_load_failure::bad_descriptor:
      return "invalid plugin table";
    case plugin_load_failure::abi_mismatch:
      return "ABI mismatch";
    case plugin_load_failure::wrong_kind:
      return "wrong kind";
    case plugin_load_failure::init_failed:
      return "init failed";
    case plugin_load_failure::crashed:
      return "crashed while loading";
    case plugin_load_failure::timed_out:
      return "timed out while loading";
    case plugin_load_failure::unchecked:
      return "cannot be checked";
  }
  return "unknown";
}

plugin_load_error::plugin_load_error(plugin_load_failure failure, std::filesystem::path file,
                                     const std::string& cause)
    : error(fmt::format("plugin {}: {}: {}", file.string(), name_of(failure), cause)),
      failure_(failure),
      file_(std::move(file)),
      cause_(cause) {}

}  // namespace troupe
