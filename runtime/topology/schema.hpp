#pragma once

#include <span>
#include <string_view>
#include <vector>

#include "runtime/core/input_limits.hpp"

namespace troupe {

/// The value a topology key takes.
enum class value_kind {
  string,
  integer,
  number,  ///< integer or float
  boolean,
  string_list,  ///< array of strings
  index_list,   ///< "0-3,7" or an array of non-negative integers
  device_list,  ///< "cpu", "cuda:N", or an array of them
  host_list,    ///< a host name, or an array of them (one per data-parallel replica)
  table,        ///< a free-form table checked by its owner (model.inline, plugins.options)
};

/// One key of a section. `default_text` is what the docs print ("" for required keys).
struct key_schema {
  std::string_view name;
  value_kind kind;
  bool required = false;
  std::string_view default_text;
  std::string_view description;
  std::vector<std::string_view> choices = {};
  integer_bounds bounds = {};  ///< integers: checked with the schema, before any value is read
};

/// A top-level section: a table ([name]) or an array of tables ([[name]]).
struct section_schema {
  std::string_view name;
  bool array = false;
  bool required = false;
  std::string_view description;
  std::vector<key_schema> keys;

  const key_schema* find(std::string_view key) const;
  std::vector<std::string> key_names() const;
};

/// The whole topology file format; docs/topology.md documents exactly these sections and keys
/// (a test checks both directions).
std::span<const section_schema> topology_schema();

const section_schema* find_section(std::string_view name);

std::string_view name_of(value_kind kind);

}  // namespace troupe
