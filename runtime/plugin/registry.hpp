#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "runtime/abi/troupe_plugin.h"
#include "runtime/plugin/kind.hpp"
#include "runtime/plugin/load_error.hpp"
#include "runtime/plugin/search_path.hpp"

namespace troupe {

/// A plugin library that is loaded, validated and initialised. It stays loaded for the life of
/// the process: code that may still run is never unloaded.
struct plugin_library {
  std::string name;
  std::string version;
  std::string description;
  plugin_kind kind = plugin_kind::attention;
  std::uint32_t abi_major = 0;
  std::uint32_t abi_minor = 0;
  std::filesystem::path file;         ///< the library as requested
  std::filesystem::path loaded_from;  ///< what dlopen opened (a private copy for fresh loads)
  int generation = 1;                 ///< 1 for the first load of this name, then 2, 3, ...
  const troupe_plugin* api = nullptr;
};

/// A library as control replies show it: {"plugin", "version", "generation", "library"}.
nlohmann::json describe(const plugin_library& library);

/// How plugin_registry::load treats a library.
struct plugin_load_options {
  /// The kind the caller's role needs; another kind is a wrong_kind error.
  std::optional<plugin_kind> expected_kind;
  /// Load a private copy under a new file name even if this file is loaded already: how a
  /// running job picks up a rebuilt library (dlopen of a loaded path returns the old code).
  bool fresh_copy = false;
};

/// Loads plugin libraries (dlopen RTLD_NOW | RTLD_LOCAL), checks them and keeps the record of
/// what is loaded. Every failure throws plugin_load_error naming the file and the cause; nothing
/// about the process changes on failure. Each library is first loaded and initialised in a probe
/// process (probe.hpp): one that crashes, exits or hangs there is never loaded here. A library
/// libtroupe-NAME.so must call itself NAME, and be of the kind the role asks for.
class plugin_registry {
 public:
  explicit plugin_registry(plugin_search_path path = plugin_search_path::standard());
  ~plugin_registry();
  plugin_registry(const plugin_registry&) = delete;
  plugin_registry& operator=(const plugin_registry&) = delete;

  /// Loads a plugin by name (searched as libtroupe-NAME.so) or by path (when it contains '/' or
  /// ends in .so). A library already loaded from the same file is returned as it is, unless
  /// `fresh_copy` is set.
  std::shared_ptr<const plugin_library> load(std::string_view reference,
                                             plugin_load_options options = {});

  /// Everything loaded so far, in load order.
  std::vector<std::shared_ptr<const plugin_library>> loaded() const;

  const plugin_search_path& search_path() const { return search_path_; }

 private:
  std::shared_ptr<const plugin_library> load_file(const std::filesystem::path& file,
                                                  const plugin_load_options& options);
  /// dlopen, the checks and init() in this process; mutex_ held.
  std::shared_ptr<const plugin_library> load_in_process(const std::filesystem::path& file,
                                                        const std::filesystem::path& canonical,
                                                        const std::filesystem::path& open_path,
                                                        const plugin_load_options& options);
  /// The library loaded from `canonical`, or null; mutex_ held.
  std::shared_ptr<plugin_library> find_loaded(const std::filesystem::path& canonical) const;
  std::filesystem::path private_copy(const std::filesystem::path& file);
  /// Removes a private copy's file, and its folder once no other copy is in it; mutex_ held.
  void drop_private_copy(const std::filesystem::path& copy);

  plugin_search_path search_path_;
  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<plugin_library>> loaded_;
  std::filesystem::path private_dir_;
  int copies_ = 0;
};

/// The host's ABI version as "MAJOR.MINOR".
std::string host_abi_version();

}  // namespace troupe
