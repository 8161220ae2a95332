#pragma once

#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace troupe {

/// Where plugin libraries are looked up, in order:
///   1. the topology's [plugins] search_path entries, relative to the topology file;
///   2. the directories in TROUPE_PLUGIN_PATH (colon-separated);
///   3. the install dir (or, for an executable in its build tree, build/plugins/*).
/// A plugin NAME is found as libtroupe-NAME.so in the first directory that has it. Anything of
/// that name that is no readable file (a directory, a symlink loop or to nothing, an unreadable
/// file) is an error naming it, not a reason to look further: a later directory's library of
/// the same name is not what the earlier entry meant.
class plugin_search_path {
 public:
  struct entry {
    std::filesystem::path dir;
    std::string origin;  ///< "topology", "TROUPE_PLUGIN_PATH" or "install"
  };

  plugin_search_path() = default;
  explicit plugin_search_path(std::vector<entry> entries) : entries_(std::move(entries)) {}

  /// The standard path for a topology in `topology_dir` naming `topology_entries`.
  static plugin_search_path standard(const std::filesystem::path& topology_dir = {},
                                     std::span<const std::string> topology_entries = {});

  /// libtroupe-NAME.so for a plugin name.
  static std::string library_file_name(std::string_view name);

  /// True when `reference` is a path to a library rather than a plugin name ("./x.so", "a/b").
  static bool is_path(std::string_view reference);

  /// NAME for a file libtroupe-NAME.so; nullopt for a file named otherwise.
  static std::optional<std::string> plugin_name_of(const std::filesystem::path& file);

  /// Throws plugin_load_error unless `file` is a regular file this process may read: not_found
  /// when there is nothing, not_a_file (with the cause) for a directory, a symlink loop, a
  /// dangling symlink, a device, a file it may not read. `where` ends the message ("" for none).
  static void check_file(const std::filesystem::path& file, std::string_view where = {});

  /// The first libtroupe-NAME.so on the path, or nullopt when no directory has one. Throws
  /// plugin_load_error (not_a_file) when the first thing of that name is no readable file.
  std::optional<std::filesystem::path> find(std::string_view name) const;

  /// Every plugin name on the path (first occurrence wins), with the file it resolves to.
  std::vector<std::pair<std::string, std::filesystem::path>> available() const;

  const std::vector<entry>& entries() const { return entries_; }

  /// "dir (origin), dir (origin), ..." for error messages.
  std::string describe() const;

 private:
  std::vector<entry> entries_;
};

}  // namespace troupe
