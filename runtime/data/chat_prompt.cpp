#include "runtime/data/chat_prompt.hpp"

#include "runtime/core/error.hpp"

namespace troupe {

std::string deepseek_chat_prompt(const std::vector<chat_message>& messages, std::string_view bos,
                                 std::string_view eos, bool add_generation_prompt) {
  std::string prompt(bos);
  bool first = true;  // the system prompts come first, whatever their place, "\n\n" between
  for (const chat_message& m : messages)
    if (m.role == "system") {
      if (!first) prompt += "\n\n";
      prompt += m.content;
      first = false;
    }
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const chat_message& m = messages[i];
    if (m.role == "user") {
      prompt += "<｜User｜>";
      prompt += m.content;
    } else if (m.role == "assistant") {
      prompt += "<｜Assistant｜>";
      prompt += m.content;
      prompt += eos;
    } else if (m.role != "system") {
      fail("chat message {}: role '{}' is not one of system, user, assistant", i, m.role);
    }
  }
  if (add_generation_prompt) prompt += "<｜Assistant｜>";
  return prompt;
}

}  // namespace troupe
