#include "runtime/placement/expert_load.hpp"

#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"

namespace troupe {

namespace {

using json = nlohmann::json;

float load_value(const json& v, const std::string& where) {
  double x = 0.0;
  if (v.is_number())
    x = v.get<double>();
  else if (v.is_string())  // Prometheus writes sample values as strings
    try {
      x = std::stod(v.get<std::string>());
    } catch (const std::exception&) {
      fail("{}: '{}' is not a number", where, v.get<std::string>());
    }
  else
    fail("{}: a load must be a number, not {}", where, v.dump());
  if (!(x >= 0.0) || x > 3.0e38)
    fail("{}: a load must be finite and non-negative, not {}", where, x);
  return static_cast<float>(x);
}

/// Layers by name (numeric names in numeric order) -> summed loads.
class accumulator {
 public:
  void add_row(const std::string& layer, const json& row, const std::string& where) {
    if (!row.is_array() || row.empty())
      fail("{}: layer {}'s loads must be a non-empty list", where, layer);
    auto& sums = rows_[key(layer)];
    if (sums.second.empty()) sums = {layer, std::vector<double>(row.size(), 0.0)};
    if (sums.second.size() != row.size())
      fail("{}: layer {} has {} experts here and {} before", where, layer, row.size(),
           sums.second.size());
    for (std::size_t e = 0; e < row.size(); ++e)
      sums.second[e] += static_cast<double>(
          load_value(row[e], fmt::format("{} (layer {}, expert {})", where, layer, e)));
  }
  void add_one(const std::string& layer, std::int64_t expert, float value) {
    auto& sums = rows_[key(layer)];
    sums.first = layer;
    if (static_cast<std::int64_t>(sums.second.size()) <= expert)
      sums.second.resize(static_cast<std::size_t>(expert + 1), 0.0);
    sums.second[static_cast<std::size_t>(expert)] += static_cast<double>(value);
  }
  expert_loads take(const std::filesystem::path& file, std::string format) {
    if (rows_.empty()) fail("{}: no expert loads found", file.string());
    expert_loads out;
    out.format = std::move(format);
    for (const auto& [k, row] : rows_) {
      if (out.experts == 0) out.experts = static_cast<std::int64_t>(row.second.size());
      if (static_cast<std::int64_t>(row.second.size()) != out.experts)
        fail("{}: layer {} has {} experts, layer {} has {}", file.string(), row.first,
             row.second.size(), out.layers.front(), out.experts);
      out.layers.push_back(row.first);
      for (const double v : row.second) out.load.push_back(static_cast<float>(v));
    }
    return out;
  }

 private:
  static std::pair<long long, std::string> key(const std::string& layer) {
    try {
      std::size_t used = 0;
      const long long n = std::stoll(layer, &used);
      if (used == layer.size()) return {n, ""};
    } catch (const std::exception&) {
    }
    return {std::numeric_limits<long long>::max(), layer};
  }
  std::map<std::pair<long long, std::string>, std::pair<std::string, std::vector<double>>> rows_;
};

}  // namespace

expert_loads read_expert_loads(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) fail("{}: cannot read the expert loads", file.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  accumulator rows;
  json whole;
  try {
    whole = json::parse(text);
  } catch (const json::parse_error&) {
    // A training log: one JSON object per line.
    std::istringstream lines(text);
    std::string line;
    int number = 0;
    while (std::getline(lines, line)) {
      ++number;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = fmt::format("{}:{}", file.string(), number);
      json step;
      try {
        step = json::parse(line);
      } catch (const json::parse_error& e) {
        fail(
            "{}: not JSON ({}); give a JSON matrix, a `troupe train --log-json` file or a "
            "Prometheus query result",
            where, e.what());
      }
      if (!step.is_object() || !step.contains("expert_load")) continue;
      for (const auto& [layer, row] : step["expert_load"].items()) rows.add_row(layer, row, where);
    }
    return rows.take(file, "training log");
  }
  const std::string where = file.string();
  if (whole.is_array()) {
    for (std::size_t l = 0; l < whole.size(); ++l) rows.add_row(std::to_string(l), whole[l], where);
    return rows.take(file, "matrix");
  }
  if (whole.is_object() && whole.contains("data") && whole["data"].contains("result")) {
    for (const auto& sample : whole["data"]["result"]) {
      const auto& labels = sample.value("metric", json::object());
      if (!labels.contains("layer") || !labels.contains("expert") || !sample.contains("value"))
        fail(
            "{}: a Prometheus sample needs `layer` and `expert` labels and a value "
            "(query troupe_expert_tokens_routed_total)",
            where);
      const std::string expert = labels["expert"].get<std::string>();
      std::int64_t index = 0;
      try {
        index = std::stoll(expert);
      } catch (const std::exception&) {
        fail("{}: expert label '{}' is not an index", where, expert);
      }
      if (index < 0 || index > (1 << 20)) fail("{}: expert label {} is out of range", where, index);
      rows.add_one(labels["layer"].get<std::string>(), index,
                   load_value(sample["value"].at(1), where));
    }
    return rows.take(file, "prometheus");
  }
  if (whole.is_object() && whole.contains("expert_load")) {  // a one-line training log
    for (const auto& [layer, row] : whole["expert_load"].items()) rows.add_row(layer, row, where);
    return rows.take(file, "training log");
  }
  if (whole.is_object()) {
    for (const auto& [layer, row] : whole.items()) rows.add_row(layer, row, where);
    return rows.take(file, "matrix");
  }
  fail(
      "{}: expert loads must be a JSON matrix, a `troupe train --log-json` file or a Prometheus "
      "query result",
      where);
}

}  // namespace troupe
