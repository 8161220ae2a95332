#include <filesystem>

#include <fmt/format.h>

#include "runtime/plugin/registry.hpp"
#include "tools/troupe/commands.hpp"

namespace troupe::cli {

namespace {

struct plugins_list_options {
  std::vector<std::string> dirs;
};

int list_plugins(const plugins_list_options& options) {
  std::vector<plugin_search_path::entry> entries;
  for (const auto& dir : options.dirs) entries.push_back({std::filesystem::path(dir), "--dir"});
  const auto standard = plugin_search_path::standard();
  for (const auto& e : standard.entries()) entries.push_back(e);
  plugin_registry registry{plugin_search_path(entries)};
  fmt::print("plugin search path:\n");
  for (const auto& e : registry.search_path().entries())
    fmt::print("  {} ({}{})\n", e.dir.string(), e.origin,
               std::filesystem::is_directory(e.dir) ? "" : ", missing");
  const auto available = registry.search_path().available();
  if (available.empty()) {
    fmt::print("no plugins found (libtroupe-NAME.so) on the search path\n");
    return exit_ok;
  }
  fmt::print("{:<22} {:<10} {:<10} {:<6} {}\n", "NAME", "KIND", "VERSION", "ABI", "FILE");
  int broken = 0;
  for (const auto& [name, file] : available) {
    try {
      auto library = registry.load(file.string());
      fmt::print("{:<22} {:<10} {:<10} {:<6} {}\n", library->name, name_of(library->kind),
                 library->version, fmt::format("{}.{}", library->abi_major, library->abi_minor),
                 file.string());
    } catch (const plugin_load_error& e) {
      ++broken;
      fmt::print("{:<22} {:<10} {:<10} {:<6} {}\n    error: {}\n", name, "-", "-", "-",
                 file.string(), e.what());
    }
  }
  if (broken > 0)
    fmt::print("{} of {} libraries could not be loaded (see the errors above)\n", broken,
               available.size());
  return exit_ok;
}

}  // namespace

void add_plugins_command(CLI::App& app, int& exit_code) {
  auto* plugins = app.add_subcommand("plugins", "Plugins on the search path");
  plugins->require_subcommand(1);
  auto options = std::make_shared<plugins_list_options>();
  auto* list = plugins->add_subcommand(
      "list",
      "Load every libtroupe-NAME.so on the search path (TROUPE_PLUGIN_PATH, then the install dir) "
      "and show its name, kind, version and ABI, or why it cannot be loaded (each is tried in a "
      "probe process first: one that crashes or hangs is listed with the cause)");
  list->add_option("--dir", options->dirs, "Also search this directory (first; may repeat)");
  list->callback([options, &exit_code] { exit_code = list_plugins(*options); });
}

}  // namespace troupe::cli
