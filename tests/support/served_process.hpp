#pragma once

// `troupe serve` run as a process by a test: where it listens (from its log) and a completion
// request to it with curl.

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/support/command_runs.hpp"

namespace troupe::testing {

inline std::string read_text(const std::filesystem::path& file) {
  std::ifstream in(file);
  return {std::istreambuf_iterator<char>(in), {}};
}

/// The server's URL from its log ("serving NAME at http://127.0.0.1:PORT ..."), or "" when it
/// exits or 90 s pass first.
inline std::string served_url(const std::filesystem::path& log, background_command& server) {
  std::string url;
  eventually(90, [&] {
    const std::string text = read_text(log);
    const auto serving = text.find("troupe serve: serving ");
    const auto at = text.find(" at http://", serving == std::string::npos ? text.size() : serving);
    if (at == std::string::npos) return server.exited();
    url = text.substr(at + 4, text.find(' ', at + 4) - at - 4);
    return true;
  });
  return url;
}

/// POSTs `body` to URL/v1/completions; the reply's text, or the whole reply in <> when it has
/// none (an error).
inline std::string completion_text(const std::string& url, const nlohmann::json& body) {
  const std::string reply =
      run_command(fmt::format("curl -s --max-time 60 -H 'Content-Type: application/json' -d "
                              "'{}' {}/v1/completions",
                              body.dump(), url))
          .output;
  const auto j = nlohmann::json::parse(reply, nullptr, false);
  if (!j.is_object() || !j.contains("choices")) return "<" + reply + ">";
  return j["choices"][0].value("text", "");
}

}  // namespace troupe::testing
