#include "runtime/topology/overrides.hpp"

#include <memory>

#include "runtime/topology/diagnostic.hpp"

namespace troupe {

namespace {

[[noreturn]] void reject(const std::string& source, int column, std::string message) {
  throw topology_error({{{source, 1, column}, diagnostic::severity::error, std::move(message)}});
}

/// The value as TOML, or as a string when it is not valid TOML (a bare word).
toml::table parse_value(const std::string& key, const std::string& value,
                        const std::string& source) {
  try {
    return toml::parse(key + "=" + value, source);
  } catch (const toml::parse_error&) {
  }
  std::string quoted;
  for (const char c : value) {
    if (c == '"' || c == '\\') quoted += '\\';
    quoted += c;
  }
  try {
    return toml::parse(key + "=\"" + quoted + "\"", source);
  } catch (const toml::parse_error& e) {
    reject(source, static_cast<int>(e.source().begin.column),
           "not a TOML value: " + std::string(e.description()));
  }
}

/// Copies every key of `from` into `into`, merging tables and replacing everything else.
void merge(toml::table& into, const toml::table& from) {
  for (auto&& [key, node] : from) {
    auto* target = into.get(key);
    if (target != nullptr && target->is_table() && node.is_table())
      merge(*target->as_table(), *node.as_table());
    else {
      // Replace key and value both, so diagnostics point at the override, not the file.
      into.erase(key);
      into.insert(key, node);
    }
  }
}

}  // namespace

void apply_overrides(toml::table& root, const std::vector<std::string>& overrides) {
  for (const std::string& text : overrides) {
    const std::string source = "--set " + text;
    const auto equals = text.find('=');
    if (equals == std::string::npos || equals == 0)
      reject(source, 1, "an override is KEY=VALUE, for example parallel.pipeline=2");
    std::string key = text.substr(0, equals);
    const std::string value = text.substr(equals + 1);
    // An entry of a list of tables: "stages[1].layers".
    toml::table* target = &root;
    if (const auto open = key.find('['); open != std::string::npos) {
      const auto close = key.find(']', open);
      if (close == std::string::npos || close + 1 >= key.size() || key[close + 1] != '.')
        reject(source, static_cast<int>(open + 1),
               "write an entry of a list of tables as SECTION[INDEX].KEY, for example "
               "stages[1].layers");
      const std::string section = key.substr(0, open);
      std::size_t index = 0;
      try {
        index = std::stoul(key.substr(open + 1, close - open - 1));
      } catch (const std::exception&) {
        reject(source, static_cast<int>(open + 2), "the index must be a number");
      }
      auto* array = root.get_as<toml::array>(section);
      if (array == nullptr || !array->is_array_of_tables())
        reject(source, 1, "'" + section + "' is not a list of tables in this topology");
      if (index >= array->size())
        reject(source, static_cast<int>(open + 2),
               "'" + section + "' has " + std::to_string(array->size()) + " entries (0-" +
                   std::to_string(array->size() - 1) + ")");
      target = array->get(index)->as_table();
      key = key.substr(close + 2);
    }
    const toml::table parsed = parse_value(key, value, source);
    // A key through a value that is not a table ("train.steps.x=1") is the parser's error.
    merge(*target, parsed);
  }
}

}  // namespace troupe
