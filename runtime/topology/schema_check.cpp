#include "runtime/topology/schema_check.hpp"

#include <cmath>
#include <optional>

#include <fmt/format.h>

#include "runtime/core/text.hpp"
#include "runtime/topology/schema.hpp"

namespace troupe {

namespace {

class schema_checker {
 public:
  schema_checker(topology& topo, std::vector<diagnostic>& diagnostics)
      : topo_(topo), diagnostics_(diagnostics), file_(topo.file.string()) {}

  std::vector<std::string> section_names() const {
    std::vector<std::string> names;
    for (const auto& s : topology_schema()) names.emplace_back(s.name);
    return names;
  }

  void check_sections(const toml::table& root) {
    for (auto&& [key, node] : root) {
      const std::string name(key.str());
      const section_schema* section = find_section(name);
      const source_position where = position_of(key.source(), file_);
      if (section == nullptr) {
        auto names = section_names();
        auto suggestion = nearest_word(name, names);
        error(where, fmt::format(
                         "unknown section '{}'{}; sections are: {}", name,
                         suggestion.empty() ? "" : fmt::format(" (did you mean '{}'?)", suggestion),
                         join(names, ", ")));
        continue;
      }
      if (section->array) {
        const auto* array = node.as_array();
        if (array == nullptr || !array->is_array_of_tables()) {
          error(where, fmt::format("'{0}' is a list of tables: write each entry as [[{0}]]", name));
          continue;
        }
        // The list as a whole points at its first entry's header.
        topo_.positions[name] =
            array->empty() ? where : position_of(array->get(0)->source(), file_);
        for (std::size_t i = 0; i < array->size(); ++i) {
          const auto& entry = *array->get(i)->as_table();
          const std::string path = fmt::format("{}[{}]", name, i);
          topo_.positions[path] = position_of(entry.source(), file_);
          check_keys(*section, entry, path, fmt::format("[[{}]] entry {}", name, i));
        }
      } else {
        const auto* table = node.as_table();
        if (table == nullptr) {
          error(where, fmt::format("'{0}' is a table: write it as [{0}]", name));
          continue;
        }
        topo_.positions[name] = position_of(table->source(), file_);
        check_keys(*section, *table, name, fmt::format("[{}]", name));
      }
    }
    for (const auto& section : topology_schema()) {
      if (section.required && !root.contains(section.name))
        error({file_, 1, 1},
              fmt::format("missing section [{0}]{1}: every topology needs it ({2})", section.name,
                          section.array ? "" : "", section.description));
    }
  }

  void check_keys(const section_schema& section, const toml::table& table, const std::string& path,
                  const std::string& label) {
    for (auto&& [key, node] : table) {
      const std::string name(key.str());
      const key_schema* schema = section.find(name);
      const std::string key_path = path + "." + name;
      topo_.positions[key_path] = position_of(key.source(), file_);
      if (schema == nullptr) {
        auto names = section.key_names();
        auto suggestion = nearest_word(name, names);
        error(
            position_of(key.source(), file_),
            fmt::format("unknown key '{}' in {}{}; allowed keys: {}", name, label,
                        suggestion.empty() ? "" : fmt::format(" (did you mean '{}'?)", suggestion),
                        join(names, ", ")));
        continue;
      }
      if (!has_kind(node, schema->kind)) {
        error(position_of(node.source(), file_),
              fmt::format("{}.{} must be {}", path, name, troupe::name_of(schema->kind)));
        continue;
      }
      if (const auto problem = out_of_bounds(node, *schema)) {
        error(position_of(node.source(), file_),
              fmt::format("{}.{} = {} {}", path, name, node_text(node), *problem));
        continue;
      }
      if (!schema->choices.empty()) {
        const std::string value = node.value_or(std::string());
        bool allowed = false;
        for (auto choice : schema->choices) allowed = allowed || value == choice;
        if (!allowed) {
          std::vector<std::string> choices(schema->choices.begin(), schema->choices.end());
          error(position_of(node.source(), file_),
                fmt::format("{}.{} = \"{}\" is not allowed; use one of: {}", path, name, value,
                            join(choices, ", ")));
        }
      }
    }
    for (const auto& key : section.keys) {
      if (key.required && !table.contains(key.name))
        error(position_of(table.source(), file_),
              fmt::format("missing key '{}' in {}: {}", key.name, label, key.description));
    }
  }

  /// Why an integer or number lies outside what its key allows, or nothing.
  static std::optional<std::string> out_of_bounds(const toml::node& node, const key_schema& key) {
    if (key.kind == value_kind::integer) {
      const std::int64_t v = *node.value_exact<std::int64_t>();
      if (v < key.bounds.min || v > key.bounds.max)
        return fmt::format("is out of range: it must be {}", describe_bounds(key.bounds));
    } else if (key.kind == value_kind::number) {
      if (!std::isfinite(node.value_or(0.0))) return std::string("is not a finite number");
    }
    return std::nullopt;
  }

  static std::string node_text(const toml::node& node) {
    if (auto v = node.value_exact<std::int64_t>()) return std::to_string(*v);
    return fmt::format("{}", node.value_or(0.0));
  }

  static bool has_kind(const toml::node& node, value_kind kind) {
    switch (kind) {
      case value_kind::string:
        return node.is_string();
      case value_kind::integer:
        return node.is_integer();
      case value_kind::number:
        return node.is_integer() || node.is_floating_point();
      case value_kind::boolean:
        return node.is_boolean();
      case value_kind::table:
        return node.is_table();
      case value_kind::string_list:
        return node.is_array() && node.as_array()->is_homogeneous(toml::node_type::string);
      case value_kind::index_list:
        return node.is_string() ||
               (node.is_array() && node.as_array()->is_homogeneous(toml::node_type::integer));
      case value_kind::device_list:
      case value_kind::host_list:
        return node.is_string() || (node.is_array() && !node.as_array()->empty() &&
                                    node.as_array()->is_homogeneous(toml::node_type::string));
    }
    return false;
  }

 private:
  void error(const source_position& where, std::string message) {
    diagnostics_.push_back({where, diagnostic::severity::error, std::move(message)});
  }

  topology& topo_;
  std::vector<diagnostic>& diagnostics_;
  std::string file_;
};

}  // namespace

void check_against_schema(const toml::table& root, topology& topo,
                          std::vector<diagnostic>& diagnostics) {
  schema_checker(topo, diagnostics).check_sections(root);
}

}  // namespace troupe
