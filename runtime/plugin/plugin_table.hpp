#pragma once

// Opening a plugin library and checking its table: the steps every load takes, in this process
// (plugin_registry) and in the probe process that tries a library first (probe.hpp). Each step
// throws plugin_load_error naming `file` (the library as the user named it; `open_path` may be a
// private copy of it) and the cause.

#include <filesystem>
#include <string_view>

#include "runtime/abi/troupe_plugin.h"
#include "runtime/plugin/kind.hpp"
#include "runtime/plugin/load_error.hpp"

namespace troupe {

/// dlopen(RTLD_NOW | RTLD_LOCAL): runs the library's static constructors. The handle is never
/// closed (code a constructor started may still run).
void* open_plugin_library(const std::filesystem::path& open_path,
                          const std::filesystem::path& file);

/// Looks up and calls troupe_plugin_entry: the plugin's table (never NULL).
const troupe_plugin* plugin_table_of(void* handle, const std::filesystem::path& file);

/// Checks the table's ABI version, size, kind, name, version and the functions its kind needs;
/// returns the kind. Whether the name and kind suit the file and the role is the caller's check.
plugin_kind check_plugin_table(const troupe_plugin* api, const std::filesystem::path& file);

/// The message of an init() that returned an error.
std::string init_failure_message(std::string_view plugin_name, const troupe_error& error);

}  // namespace troupe
