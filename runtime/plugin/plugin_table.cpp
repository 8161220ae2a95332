#include "runtime/plugin/plugin_table.hpp"

#include <dlfcn.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace troupe {

namespace fs = std::filesystem;

namespace {

/// The last field of ABI 1.0's troupe_plugin must be inside what the plugin declares.
constexpr std::size_t abi_1_0_plugin_size =
    offsetof(troupe_plugin, statistics) + sizeof(troupe_plugin::statistics);

/// Names of the entries a kind needs that the table leaves NULL.
std::vector<std::string> missing_functions(const troupe_plugin& api, plugin_kind kind) {
  std::vector<std::string> missing;
  auto need = [&](const void* fn, const char* name) {
    if (fn == nullptr) missing.emplace_back(name);
  };
  need(reinterpret_cast<const void*>(api.init), "init");
  need(reinterpret_cast<const void*>(api.create), "create");
  need(reinterpret_cast<const void*>(api.destroy), "destroy");
  if (is_layer_kind(kind)) {
    need(reinterpret_cast<const void*>(api.parameters), "parameters");
    need(reinterpret_cast<const void*>(api.bind), "bind");
    need(reinterpret_cast<const void*>(api.infer_outputs), "infer_outputs");
    need(reinterpret_cast<const void*>(api.forward), "forward");
    need(reinterpret_cast<const void*>(api.backward), "backward");
    need(reinterpret_cast<const void*>(api.forget), "forget");
    need(reinterpret_cast<const void*>(api.export_state), "export_state");
    need(reinterpret_cast<const void*>(api.import_state), "import_state");
  } else {
    need(reinterpret_cast<const void*>(api.gemm_provider), "gemm_provider");
  }
  return missing;
}

std::string dl_error() {
  const char* message = dlerror();
  return message != nullptr ? message : "unknown dlopen error";
}

std::string host_abi() {
  return fmt::format("{}.{}", TROUPE_PLUGIN_ABI_MAJOR, TROUPE_PLUGIN_ABI_MINOR);
}

void check_abi_version(const troupe_plugin* api, const fs::path& file) {
  if (api->abi_major != TROUPE_PLUGIN_ABI_MAJOR)
    throw plugin_load_error(plugin_load_failure::abi_mismatch, file,
                            fmt::format("built for plugin ABI {}.{}, this troupe speaks ABI {}; "
                                        "rebuild the plugin against this troupe's troupe_plugin.h",
                                        api->abi_major, api->abi_minor, host_abi()));
  if (api->abi_minor > TROUPE_PLUGIN_ABI_MINOR)
    throw plugin_load_error(plugin_load_failure::abi_mismatch, file,
                            fmt::format("needs plugin ABI {}.{}, newer than this troupe's ABI {}; "
                                        "upgrade troupe or rebuild the plugin",
                                        api->abi_major, api->abi_minor, host_abi()));
}

}  // namespace

void* open_plugin_library(const fs::path& open_path, const fs::path& file) {
  dlerror();
  // Never dlclose'd: a handle whose checks fail later is simply abandoned, so no code that a
  // static constructor may have started can lose its text.
  void* handle = dlopen(open_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr)
    throw plugin_load_error(plugin_load_failure::not_loadable, file, dl_error());
  return handle;
}

const troupe_plugin* plugin_table_of(void* handle, const fs::path& file) {
  dlerror();
  void* symbol = dlsym(handle, TROUPE_PLUGIN_ENTRY_SYMBOL);
  if (symbol == nullptr)
    throw plugin_load_error(plugin_load_failure::missing_entry, file,
                            fmt::format("no '{}' symbol: not a troupe plugin, or built without "
                                        "TROUPE_PLUGIN_EXPORT on the entry function",
                                        TROUPE_PLUGIN_ENTRY_SYMBOL));
  auto entry = reinterpret_cast<troupe_plugin_entry_fn>(symbol);
  const troupe_plugin* api = entry();
  if (api == nullptr)
    throw plugin_load_error(plugin_load_failure::bad_descriptor, file,
                            fmt::format("{}() returned NULL", TROUPE_PLUGIN_ENTRY_SYMBOL));
  return api;
}

plugin_kind check_plugin_table(const troupe_plugin* api, const fs::path& file) {
  check_abi_version(api, file);
  if (api->struct_size < abi_1_0_plugin_size)
    throw plugin_load_error(
        plugin_load_failure::bad_descriptor, file,
        fmt::format("plugin table is {} bytes, ABI {}.0 needs at least {}", api->struct_size,
                    TROUPE_PLUGIN_ABI_MAJOR, abi_1_0_plugin_size));
  auto kind = from_abi(static_cast<std::uint32_t>(api->kind));
  if (!kind)
    throw plugin_load_error(plugin_load_failure::bad_descriptor, file,
                            fmt::format("unknown plugin kind {}", static_cast<int>(api->kind)));
  if (api->name == nullptr || *api->name == '\0' || api->version == nullptr)
    throw plugin_load_error(plugin_load_failure::bad_descriptor, file,
                            "the plugin table has no name or no version");
  if (auto missing = missing_functions(*api, *kind); !missing.empty())
    throw plugin_load_error(plugin_load_failure::bad_descriptor, file,
                            fmt::format("a {} plugin must provide {}; these are NULL",
                                        name_of(*kind), fmt::join(missing, ", ")));
  return *kind;
}

std::string init_failure_message(std::string_view plugin_name, const troupe_error& error) {
  const std::string_view message(error.message, strnlen(error.message, sizeof(error.message)));
  return fmt::format("init() of plugin '{}' failed: {}", plugin_name,
                     message.empty() ? "(no message)" : message);
}

}  // namespace troupe
