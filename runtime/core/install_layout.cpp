#include "runtime/core/install_layout.hpp"

#include <algorithm>
#include <system_error>

#include "troupe_build_config.h"

namespace troupe {

namespace {

namespace fs = std::filesystem;

bool is_inside(const fs::path& child, const fs::path& parent) {
  auto c = child.lexically_normal();
  auto p = parent.lexically_normal();
  auto [parent_end, child_it] = std::mismatch(p.begin(), p.end(), c.begin(), c.end());
  return parent_end == p.end();
}

install_layout detect() {
  install_layout layout;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  const fs::path build_dir = fs::weakly_canonical(TROUPE_BUILD_DIR, ec);
  if (!exe.empty() && is_inside(exe, build_dir)) {
    layout.in_build_tree = true;
    // Each plugin builds into its own folder under build/plugins.
    for (const auto& entry : fs::directory_iterator(build_dir / "plugins", ec))
      if (entry.is_directory()) layout.plugin_dirs.push_back(entry.path());
    layout.topology_dir = fs::path(TROUPE_SOURCE_DIR) / "topologies";
    layout.corpus_dir = fs::path(TROUPE_SOURCE_DIR) / "runtime" / "data" / "corpus";
    return layout;
  }
  // Installed: prefer paths relative to the executable (a relocated prefix still works), then
  // the configured prefix.
  const fs::path prefix = exe.parent_path().parent_path();
  const fs::path configured_plugins = TROUPE_INSTALL_PLUGIN_DIR;
  const fs::path configured_data = TROUPE_INSTALL_DATA_DIR;
  for (const char* libdir : {"lib", "lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu"}) {
    fs::path candidate = prefix / libdir / "troupe" / "plugins";
    if (fs::is_directory(candidate, ec)) layout.plugin_dirs.push_back(candidate);
  }
  if (std::find(layout.plugin_dirs.begin(), layout.plugin_dirs.end(), configured_plugins) ==
      layout.plugin_dirs.end())
    layout.plugin_dirs.push_back(configured_plugins);
  const fs::path relative_data = prefix / "share" / "troupe";
  const fs::path data =
      fs::is_directory(relative_data / "topologies", ec) ? relative_data : configured_data;
  layout.topology_dir = data / "topologies";
  layout.corpus_dir = data / "corpus";
  return layout;
}

}  // namespace

const install_layout& current_install_layout() {
  static const install_layout layout = detect();
  return layout;
}

}  // namespace troupe
