#include <fmt/format.h>

#include "runtime/device/cuda.hpp"
#include "runtime/plugin/registry.hpp"
#include "tools/troupe/commands.hpp"
#include "troupe_build_config.h"

namespace troupe::cli {

void add_version_command(CLI::App& app, int& exit_code) {
  auto* command = app.add_subcommand(
      "version", "Print the version, the plugin ABI and what this build supports");
  command->callback([&exit_code] {
    fmt::print("troupe {}\n", TROUPE_VERSION);
    fmt::print("plugin ABI {}\n", host_abi_version());
    if (cuda::built_with_cuda()) {
      const auto gpus = cuda::visible_gpus();
      fmt::print("CUDA: built in (kernels for sm_90); {}\n",
                 gpus.empty()
                     ? cuda::unavailable_reason()
                     : fmt::format("{} GPU{} visible", gpus.size(), gpus.size() == 1 ? "" : "s"));
      for (const auto& gpu : gpus) fmt::print("  {}\n", cuda::describe(gpu));
    } else {
      fmt::print("CUDA: not built in\n");
    }
    exit_code = exit_ok;
  });
}

}  // namespace troupe::cli
