#include "runtime/plugin/search_path.hpp"

#include <algorithm>
#include <cstdlib>
#include <set>
#include <system_error>

#include <fmt/format.h>

#include "runtime/core/install_layout.hpp"

namespace troupe {

namespace fs = std::filesystem;

namespace {
constexpr std::string_view library_prefix = "libtroupe-";
constexpr std::string_view library_suffix = ".so";
}  // namespace

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
  std::error_code ec;
  for (const auto& e : entries_) {
    fs::path candidate = e.dir / file;
    if (fs::is_regular_file(candidate, ec)) return candidate;
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
      std::string file = path.filename().string();
      if (!file.starts_with(library_prefix) || !file.ends_with(library_suffix)) continue;
      std::string name = file.substr(library_prefix.size(),
                                     file.size() - library_prefix.size() - library_suffix.size());
      if (!name.empty() && seen.insert(name).second) found.emplace_back(name, path);
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
