#pragma once

#include <optional>
#include <string_view>

#include "runtime/abi/troupe_plugin.h"

namespace troupe {

/// What a plugin is for; mirrors troupe_plugin_kind. The topology's [plugins] roles use the names.
enum class plugin_kind { attention, moe, mtp, gemm };

/// "attention", "moe", "mtp", "gemm".
std::string_view name_of(plugin_kind kind);

std::optional<plugin_kind> parse_plugin_kind(std::string_view name);

/// The C ABI value of `kind`, and back (nullopt for values no kind has).
troupe_plugin_kind to_abi(plugin_kind kind);
std::optional<plugin_kind> from_abi(std::uint32_t value);

/// True for kinds that compute a layer (forward, backward, parameters).
constexpr bool is_layer_kind(plugin_kind kind) {
  return kind != plugin_kind::gemm;
}

}  // namespace troupe
