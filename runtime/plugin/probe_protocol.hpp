#pragma once

// What the plugin probe process (probe_main.cpp) tells libtroupe (probe.cpp), over a pipe on the
// probe's file descriptor 3: one record a line, "KEY VALUE", the value with '\' and newlines
// escaped. In order, each written (write(2), unbuffered) before the step it announces runs, so a
// probe that dies leaves the last step it began:
//   stage load | stage entry | stage init   the step about to run (dlopen, the entry, init())
//   name N, version V, description D, kind K, abi MAJOR.MINOR   the table, once it checked out
//   failure F, cause C                      a load error: F is name_of(plugin_load_failure)
//   done                                    the last record; the probe then exits 0

#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "runtime/plugin/load_error.hpp"

namespace troupe::probe_protocol {

/// The probe's file descriptor for its report.
inline constexpr int report_fd = 3;

inline std::string encode(std::string_view key, std::string_view value) {
  std::string line(key);
  line += ' ';
  for (char c : value) {
    if (c == '\\')
      line += "\\\\";
    else if (c == '\n')
      line += "\\n";
    else
      line += c;
  }
  line += '\n';
  return line;
}

/// KEY and the unescaped VALUE of one line (without its newline).
inline std::pair<std::string, std::string> decode(std::string_view line) {
  const auto space = line.find(' ');
  std::string key(line.substr(0, space));
  std::string value;
  if (space != std::string_view::npos) {
    for (std::size_t i = space + 1; i < line.size(); ++i) {
      if (line[i] == '\\' && i + 1 < line.size()) {
        value += line[i + 1] == 'n' ? '\n' : line[i + 1];
        ++i;
      } else {
        value += line[i];
      }
    }
  }
  return {std::move(key), std::move(value)};
}

/// The failure name_of gives `name`, or nullopt.
inline std::optional<plugin_load_failure> parse_failure(std::string_view name) {
  for (auto failure : {plugin_load_failure::not_found, plugin_load_failure::not_a_file,
                       plugin_load_failure::not_loadable, plugin_load_failure::missing_entry,
                       plugin_load_failure::bad_descriptor, plugin_load_failure::abi_mismatch,
                       plugin_load_failure::wrong_kind, plugin_load_failure::init_failed,
                       plugin_load_failure::crashed, plugin_load_failure::timed_out,
                       plugin_load_failure::unchecked})
    if (name_of(failure) == name) return failure;
  return std::nullopt;
}

}  // namespace troupe::probe_protocol
