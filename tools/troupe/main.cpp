// troupe: the command line of the troupe runtime.
#include <cstdio>
#include <filesystem>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "runtime/core/error.hpp"
#include "tools/troupe/commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"troupe: an actor runtime for training and serving DeepSeek-V3-style MoE models",
               "troupe"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "Log debug messages to stderr");

  int exit_code = troupe::cli::exit_ok;
  troupe::cli::add_version_command(app, exit_code);
  troupe::cli::add_plugins_command(app, exit_code);
  troupe::cli::add_topo_command(app, exit_code);
  troupe::cli::add_train_command(app, exit_code);
  troupe::cli::add_launch_command(app, exit_code);
  troupe::cli::add_ctl_command(app, exit_code);
  troupe::cli::add_schedule_command(app, exit_code);
  troupe::cli::add_plot_command(app, exit_code);
  troupe::cli::add_logits_command(app, exit_code);
  troupe::cli::add_tokenize_command(app, exit_code);
  troupe::cli::add_generate_command(app, exit_code);
  troupe::cli::add_serve_command(app, exit_code);
  troupe::cli::add_eplb_command(app, exit_code);
  troupe::cli::add_bench_command(app, exit_code);

  app.parse_complete_callback([&] {
    auto logger = spdlog::stderr_color_mt("troupe");
    spdlog::set_default_logger(logger);
    spdlog::set_pattern("%^[%l]%$ %v");
    spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::info);
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11's own codes (105 for a bad value, ...) are not troupe's: every bad command line is 1.
    const int code = app.exit(e);
    return code == 0 ? troupe::cli::exit_ok : troupe::cli::exit_bad_input;
  } catch (const troupe::error& e) {
    std::fprintf(stderr, "troupe: %s\n", e.what());
    return troupe::cli::exit_bad_input;
  } catch (const std::filesystem::filesystem_error& e) {
    // An unreadable directory or file met outside the readers that name it themselves.
    std::fprintf(stderr, "troupe: %s\n", e.what());
    return troupe::cli::exit_bad_input;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe: internal error: %s\n", e.what());
    return troupe::cli::exit_bad_input;
  }
  return exit_code;
}
