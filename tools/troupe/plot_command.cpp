// troupe plot: loss curves and an expert-load heatmap (layer x expert) from a --log-json file,
// drawn by gnuplot into a PNG.

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tools/troupe/commands.hpp"

namespace troupe::cli {

namespace {

namespace fs = std::filesystem;

struct plot_options {
  std::string log;
  std::string out;
};

/// A --log-json file's loss curves (one line per step), and the expert load of each layer
/// summed over its steps.
struct step_log {
  std::string curves;
  std::map<std::string, std::vector<double>> load;
  int steps = 0;
};

/// Adds a step record's expert load (if it has one) to `load`.
void add_expert_load(const nlohmann::json& record,
                     std::map<std::string, std::vector<double>>& load) {
  if (!record.contains("expert_load")) return;
  for (const auto& [layer, counts] : record["expert_load"].items()) {
    auto& total = load[layer];
    const auto values = counts.get<std::vector<double>>();
    total.resize(values.size(), 0.0);
    for (std::size_t e = 0; e < values.size(); ++e) total[e] += values[e];
  }
}

/// Reads the step records of `options.log`; empty, after a message, when it cannot.
std::optional<step_log> read_step_log(const plot_options& options) {
  std::ifstream in(options.log);
  if (!in) {
    fmt::print(stderr, "troupe plot: cannot read {}\n", options.log);
    return std::nullopt;
  }
  // Loss curves, and the expert load summed over the log's steps, normalised by each layer's
  // mean (1 is a balanced expert).
  step_log log;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
      log.curves += fmt::format("{} {} {} {} {}\n", j.at("step").get<std::int64_t>(),
                                j.at("loss").get<double>(), j.at("mtp_loss").get<double>(),
                                j.at("balance_loss").get<double>(),
                                j.at("expert_load_max_over_mean").get<double>());
      add_expert_load(j, log.load);
    } catch (const nlohmann::json::exception& e) {
      fmt::print(stderr, "troupe plot: {}:{}: not a step record of --log-json ({})\n", options.log,
                 number, e.what());
      return std::nullopt;
    }
    ++log.steps;
  }
  return log;
}

/// The heatmap's shape: its layers (rows) and experts (columns), and the gnuplot ytics that
/// name the layers.
struct heatmap_shape {
  std::size_t layers = 0;
  std::size_t experts = 0;
  std::string ytics;
};

/// Writes the heatmap data to `file`: each layer's expert load divided by the layer's mean.
heatmap_shape write_heatmap(const fs::path& file,
                            const std::map<std::string, std::vector<double>>& load) {
  // One row per layer (in layer order), one column per expert.
  std::vector<std::pair<long long, std::vector<double>>> rows;
  for (auto& [layer, counts] : load) rows.emplace_back(std::stoll(layer), counts);
  std::sort(rows.begin(), rows.end());
  heatmap_shape shape;
  shape.layers = rows.size();
  for (const auto& row : rows) shape.experts = std::max(shape.experts, row.second.size());
  std::ofstream heat(file);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    double mean = 0.0;
    for (double c : rows[r].second) mean += c;
    mean /= static_cast<double>(std::max<std::size_t>(rows[r].second.size(), 1));
    for (std::size_t e = 0; e < rows[r].second.size(); ++e)
      heat << fmt::format("{} {} {}\n", e, r, mean > 0 ? rows[r].second[e] / mean : 0.0);
    heat << "\n";
    shape.ytics += fmt::format("{}\"{}\" {}", r == 0 ? "" : ", ", rows[r].first, r);
  }
  return shape;
}

/// Writes the gnuplot script that draws `work`'s curves.dat and load.dat into `options.out`.
void write_plot_script(const fs::path& work, const plot_options& options, int steps,
                       const heatmap_shape& shape) {
  std::ofstream script(work / "plot.gp");
  script << fmt::format(
      "set terminal pngcairo size 1200,500 font \"sans,10\"\n"
      "set output '{}'\n"
      "set multiplot layout 1,2 title '{}: {} steps'\n"
      "set title 'loss'\nset xlabel 'step'\nset ylabel 'loss'\nset key top right\n"
      "set y2label 'expert load max/mean'\nset y2tics\nset ytics nomirror\n"
      "plot '{}' using 1:2 with lines lw 2 title 'main', '' using 1:3 with lines lw 2 "
      "title 'MTP', '' using 1:5 axes x1y2 with lines dt 2 title 'load max/mean'\n"
      "unset y2label\nunset y2tics\nset ytics mirror\n"
      "set title 'expert load / layer mean (all steps)'\nset xlabel 'expert'\n"
      "set ylabel 'MoE layer'\nset ytics ({})\nset cblabel 'load / mean'\n"
      "set xrange [-0.5:{}]\nset yrange [-0.5:{}]\n"
      "set palette defined (0 'white', 1 'orange', 3 'red', 4 'black')\n",
      options.out, fs::path(options.log).filename().string(), steps, (work / "curves.dat").string(),
      shape.ytics, static_cast<double>(shape.experts) - 0.5,
      static_cast<double>(shape.layers) - 0.5);
  if (shape.layers == 0)
    script << "set title 'no MoE layers'\nplot 0 notitle\n";
  else
    script << fmt::format("plot '{}' using 1:2:3 with image notitle\n",
                          (work / "load.dat").string());
  script << "unset multiplot\n";
}

int plot(const plot_options& options) {
  const std::optional<step_log> log = read_step_log(options);
  if (!log) return exit_bad_input;
  if (log->steps == 0) {
    fmt::print(stderr, "troupe plot: {} has no steps\n", options.log);
    return exit_bad_input;
  }
  const fs::path work =
      fs::temp_directory_path() / fmt::format("troupe-plot-{}", static_cast<long>(::getpid()));
  fs::create_directories(work);
  std::ofstream(work / "curves.dat") << log->curves;
  const heatmap_shape shape = write_heatmap(work / "load.dat", log->load);
  write_plot_script(work, options, log->steps, shape);
  const std::string command = fmt::format("gnuplot '{}' 2>&1", (work / "plot.gp").string());
  const int status = std::system(command.c_str());
  fs::remove_all(work);
  if (status != 0) {
    fmt::print(stderr,
               "troupe plot: gnuplot failed (status {}); install it with tools/setup "
               "(Debian's gnuplot-nox)\n",
               WIFEXITED(status) ? WEXITSTATUS(status) : status);
    return exit_unavailable;
  }
  fmt::print("{}\n", options.out);
  return exit_ok;
}

}  // namespace

void add_plot_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<plot_options>();
  auto* command = app.add_subcommand(
      "plot", "Draw loss curves and an expert-load heatmap from a `troupe train --log-json` file");
  command->add_option("LOG", options->log, "The JSON-lines log of troupe train")->required();
  command->add_option("--out", options->out, "The PNG to write")->required();
  command->callback([options, &exit_code] { exit_code = plot(*options); });
}

}  // namespace troupe::cli
