#include "runtime/plugin/search_path.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>
#include <system_error>

#include <fmt/format.h>

#include "runtime/core/install_layout.hpp"
#include "runtime/plugin/load_error.hpp"

namespace troupe {

namespace fs = std::filesystem;

namespace {
constexpr std::string_view library_prefix = "libtroupe-";
constexpr std::string_view library_suffix = ".so";

/// Why `file`, which exists (lstat succeeded), cannot be opened as a library; empty when it can.
std::string unusable_cause(const fs::path& file) {
  struct stat target {};
  if (::stat(file.c_str(), &target) != 0) {
    const int error = errno;
    if (error == ELOOP) return "a symbolic link loop";
    if (error == ENOENT) {
      std::error_code ec;
      return fmt::format("a symbolic link to {}, which does not exist",
                         fs::read_symlink(file, ec).string());
    }
    return fmt::format("cannot be examined: {}", std::strerror(error));
  }
  if (S_ISDIR(target.st_mode)) return "a directory, not a library";
  if (!S_ISREG(target.st_mode)) return "not a regular file (a device, FIFO or socket)";
  if (::access(file.c_str(), R_OK) != 0)
    return fmt::format("not readable by this process: {}", std::strerror(errno));
  return {};
}

/// True when there is nothing at all at `file` (not even a dangling symlink).
bool nothing_at(const fs::path& file) {
  struct stat link {};
  return ::lstat(file.c_str(), &link) != 0 && (errno == ENOENT || errno == ENOTDIR);
}

}  // namespace

std::optional<std::string> plugin_search_path::plugin_name_of(const fs::path& file) {
  const std::string name = file.filename().string();
  if (!name.starts_with(library_prefix) || !name.ends_with(library_suffix) ||
      name.size() <= library_prefix.size() + library_suffix.size())
    return std::nullopt;
  return name.substr(library_prefix.size(),
                     name.size() - library_prefix.size() - library_suffix.size());
}

void plugin_search_path::check_file(const fs::path& file, std::string_view where) {
  const std::string suffix = where.empty() ? "" : fmt::format(" ({})", where);
  if (nothing_at(file))
    throw plugin_load_error(plugin_load_failure::not_found, file, "no such file" + suffix);
  const std::string cause = unusable_cause(file);
  if (!cause.empty())
    throw plugin_load_error(plugin_load_failure::not_a_file, file, cause + suffix);
}

plugin_search_path plugin_search_path::standard(const fs::path& topology_dir,
                                                std::span<const std::string> topology_entries) {
  std::vector<entry> entries;
  for (const auto& dir : topology_entries) {
    fs::path p(dir);
    entries.push_back({p.is_absolute() ? p : (topology_dir / p).lexically_normal(), "topology"});
  }
  if (const char* env = std::getenv("TROUPE_PLUGIN_PATH")) {
    std::string_view rest(env);
    while (!rest.empty()) {
      auto colon = rest.find(':');
      std::string_view dir = rest.substr(0, colon);
      if (!dir.empty()) entries.push_back({fs::path(std::string(dir)), "TROUPE_PLUGIN_PATH"});
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
  }
  const auto& layout = current_install_layout();
  for (const auto& dir : layout.plugin_dirs)
    entries.push_back({dir, layout.in_build_tree ? "build tree" : "install"});
  return plugin_search_path(std::move(entries));
}

std::string plugin_search_path::library_file_name(std::string_view name) {
  return fmt::format("{}{}{}", library_prefix, name, library_suffix);
}

bool plugin_search_path::is_path(std::string_view reference) {
  return reference.find('/') != std::string_view::npos || reference.ends_with(".so");
}

std::optional<fs::path> plugin_search_path::find(std::string_view name) const {
  const std::string file = library_file_name(name);
  for (const auto& e : entries_) {
    fs::path candidate = e.dir / file;
    if (nothing_at(candidate)) continue;
    // NOTES: what is there must be usable: falling through to a later directory would silently
    // run another library (usually the installed one) than the entry the user put first.
    check_file(candidate, fmt::format("found for plugin '{}' on the search path, from {}; fix or "
                                      "remove it",
                                      name, e.origin));
    return candidate;
  }
  return std::nullopt;
}

std::vector<std::pair<std::string, fs::path>> plugin_search_path::available() const {
  std::vector<std::pair<std::string, fs::path>> found;
  std::set<std::string> seen;
  std::error_code ec;
  for (const auto& e : entries_) {
    std::vector<fs::path> files;
    for (const auto& item : fs::directory_iterator(e.dir, ec)) files.push_back(item.path());
    std::sort(files.begin(), files.end());
    for (const auto& path : files) {
      auto name = plugin_name_of(path);
      if (name && seen.insert(*name).second) found.emplace_back(*name, path);
    }
  }
  return found;
}

std::string plugin_search_path::describe() const {
  if (entries_.empty()) return "no directories: set TROUPE_PLUGIN_PATH or [plugins] search_path";
  std::string out;
  for (const auto& e : entries_) {
    if (!out.empty()) out += ", ";
    out += fmt::format("{} ({})", e.dir.string(), e.origin);
  }
  return out;
}

}  // namespace troupe
