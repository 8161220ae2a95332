#include "runtime/placement/expert_load.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
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

namespace {

/// `text` as a whole non-negative decimal number.
bool parse_layer(const std::string& text, std::int64_t& layer) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), layer);
  return ec == std::errc() && end == text.data() + text.size() && layer >= 0;
}

}  // namespace

layer_expert_load requested_expert_load(const nlohmann::json& given,
                                        const std::vector<std::int64_t>& moe_layers,
                                        std::int64_t expert_count) {
  const auto experts = static_cast<std::size_t>(expert_count);
  // The rows, each under its name; loads that are not whole numbers (normalised ones) are
  // scaled by 10^6 for all layers, which keeps their ratios, all EPLB looks at.
  std::vector<std::pair<std::string, const nlohmann::json*>> rows;
  if (given.is_array()) {
    for (std::size_t i = 0; i < given.size(); ++i) rows.emplace_back(std::to_string(i), &given[i]);
  } else if (given.is_object()) {
    for (const auto& [key, row] : given.items()) rows.emplace_back(key, &row);
  } else {
    fail("the rebalance request: \"load\" must map MoE layers to loads or list them in order");
  }
  if (rows.empty()) fail("the rebalance request: \"load\" holds no layer");
  bool whole = true;
  for (const auto& [name, row] : rows) {
    if (!row->is_array() || row->size() != experts)
      fail("the rebalance request: load of layer {} must list {} numbers, one per expert", name,
           experts);
    for (const auto& v : *row) {
      if (!v.is_number() || !(v.get<double>() >= 0.0) || v.get<double>() > 1e12)
        fail("the rebalance request: load of layer {} holds {}, not a token count", name, v.dump());
      whole = whole && v.get<double>() == std::floor(v.get<double>());
    }
  }
  const double scale = whole ? 1.0 : 1e6;
  const auto counts_of = [&](const nlohmann::json& row) {
    std::vector<std::int64_t> counts;
    for (const auto& v : row) counts.push_back(std::llround(v.get<double>() * scale));
    return counts;
  };
  // Names that are all MoE layers name them; others (a matrix's row numbers) are rows in the
  // MoE layers' order, sorted by number where they are numbers.
  bool by_layer = !given.is_array();
  std::vector<std::int64_t> numbers;
  for (const auto& [name, row] : rows) {
    std::int64_t layer = -1;
    const bool number = parse_layer(name, layer);
    numbers.push_back(number ? layer : -1);
    if (!number || std::find(moe_layers.begin(), moe_layers.end(), layer) == moe_layers.end())
      by_layer = false;
  }
  layer_expert_load load;
  if (by_layer) {
    for (std::size_t i = 0; i < rows.size(); ++i)
      if (!load.emplace(numbers[i], counts_of(*rows[i].second)).second)
        fail("the rebalance request: layer {} is given twice", numbers[i]);
    return load;
  }
  if (rows.size() != moe_layers.size())
    fail(
        "the rebalance request: the load's layers ({}) are not the model's MoE layers ({}), nor "
        "as many rows",
        rows.size(), fmt::join(moe_layers, ", "));
  std::vector<std::size_t> order(rows.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  if (std::none_of(numbers.begin(), numbers.end(), [](std::int64_t n) { return n < 0; }))
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t x, std::size_t y) { return numbers[x] < numbers[y]; });
  for (std::size_t i = 0; i < order.size(); ++i)
    load[moe_layers[i]] = counts_of(*rows[order[i]].second);
  return load;
}

}  // namespace troupe
