#pragma once

#include <filesystem>
#include <string>

#include "runtime/core/error.hpp"

namespace troupe {

/// Why a plugin library could not be used. Each has its own message; all name the file.
enum class plugin_load_failure {
  not_found,       ///< no libtroupe-NAME.so on the search path, or the path does not exist
  not_a_file,      ///< something named like a plugin that is no readable file: a directory, a
                   ///< symlink loop or to nothing, a file this process may not read
  not_loadable,    ///< dlopen refused it: not a shared library, wrong architecture, missing deps
  missing_entry,   ///< the library has no troupe_plugin_entry symbol
  bad_descriptor,  ///< the entry returned NULL or a table with missing or invalid fields
  abi_mismatch,    ///< built for another ABI major, or a newer minor than this host
  wrong_kind,      ///< a plugin of another kind than the role needs
  init_failed,     ///< the plugin's init() reported an error
  crashed,         ///< the probe process died loading it: a signal, or an exit before reporting
  timed_out,       ///< the probe process did not finish loading it before its deadline
  unchecked,       ///< the probe process could not be started, so the library was not loaded
};

std::string_view name_of(plugin_load_failure failure);

/// A plugin library that could not be loaded. The process is unaffected and keeps running.
class plugin_load_error : public error {
 public:
  plugin_load_error(plugin_load_failure failure, std::filesystem::path file,
                    const std::string& cause);

  plugin_load_failure failure() const { return failure_; }
  const std::filesystem::path& file() const { return file_; }
  /// The cause alone, without the file and the failure's name.
  const std::string& cause() const { return cause_; }

 private:
  plugin_load_failure failure_;
  std::filesystem::path file_;
  std::string cause_;
};

}  // namespace troupe
