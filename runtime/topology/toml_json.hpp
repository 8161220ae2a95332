#pragma once

// A TOML value as JSON: how a topology hands its inline model config and its plugins' options on
// (both are JSON where they land).

#include <toml++/toml.h>
#include <nlohmann/json.hpp>

namespace troupe {

/// Tables become objects, arrays arrays, strings, integers, floats and booleans themselves; dates
/// and times (meaningless to a model config or a plugin option) null.
nlohmann::json to_json(const toml::node& node);

}  // namespace troupe
