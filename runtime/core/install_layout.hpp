#pragma once

#include <filesystem>
#include <vector>

namespace troupe {

/// Where troupe's own files are, for the running executable. An installed troupe looks next to
/// itself (../lib/<...>/troupe/plugins, ../share/troupe); an executable inside the build tree it
/// was built in uses the build tree and the source tree, so `build/troupe` works before install.
struct install_layout {
  bool in_build_tree = false;
  std::vector<std::filesystem::path>
      plugin_dirs;                     ///< searched after the topology's and the environment's
  std::filesystem::path topology_dir;  ///< shipped topologies (tiny.toml is the default)
  std::filesystem::path corpus_dir;    ///< the built-in training corpus

  /// The default topology `troupe train` runs.
  std::filesystem::path default_topology() const { return topology_dir / "tiny.toml"; }
};

/// The layout of the running executable (read from /proc/self/exe once).
const install_layout& current_install_layout();

}  // namespace troupe
