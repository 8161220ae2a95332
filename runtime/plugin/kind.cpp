#include "runtime/plugin/kind.hpp"

#include <array>
#include <utility>

namespace troupe {

namespace {
constexpr std::array<std::pair<plugin_kind, std::string_view>, 4> kind_names{{
    {plugin_kind::attention, "attention"},
    {plugin_kind::moe, "moe"},
    {plugin_kind::mtp, "mtp"},
    {plugin_kind::gemm, "gemm"},
}};
}  // namespace

std::string_view name_of(plugin_kind kind) {
  return kind_names[static_cast<std::size_t>(kind)].second;
}

std::optional<plugin_kind> parse_plugin_kind(std::string_view name) {
  for (const auto& [kind, kind_name] : kind_names)
    if (kind_name == name) return kind;
  return std::nullopt;
}

troupe_plugin_kind to_abi(plugin_kind kind) {
  switch (kind) {
    case plugin_kind::attention:
      return TROUPE_PLUGIN_KIND_ATTENTION;
    case plugin_kind::moe:
      return TROUPE_PLUGIN_KIND_MOE;
    case plugin_kind::mtp:
      return TROUPE_PLUGIN_KIND_MTP;
    case plugin_kind::gemm:
      return TROUPE_PLUGIN_KIND_GEMM;
  }
  return TROUPE_PLUGIN_KIND_ATTENTION;
}

std::optional<plugin_kind> from_abi(std::uint32_t value) {
  switch (value) {
    case TROUPE_PLUGIN_KIND_ATTENTION:
      return plugin_kind::attention;
    case TROUPE_PLUGIN_KIND_MOE:
      return plugin_kind::moe;
    case TROUPE_PLUGIN_KIND_MTP:
      return plugin_kind::mtp;
    case TROUPE_PLUGIN_KIND_GEMM:
      return plugin_kind::gemm;
    default:
      return std::nullopt;
  }
}

}  // namespace troupe
