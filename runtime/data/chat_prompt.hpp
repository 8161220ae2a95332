#pragma once

// DeepSeek-V3's chat format, as its tokenizer_config.json's chat_template renders a conversation
// without tool calls: the BOS token, the system prompts (joined by a blank line), then per turn
// "<｜User｜>" and the user's text, or "<｜Assistant｜>", the answer and the EOS token;
// "<｜Assistant｜>" at the end asks for the next answer. A prompt built here is tokenized with the
// added tokens intact; so is special token text inside a message, as with Hugging Face's
// apply_chat_template: a server that takes text from users should know it.

#include <string>
#include <string_view>
#include <vector>

namespace troupe {

struct chat_message {
  std::string role;  ///< "system", "user" or "assistant"
  std::string content;
};

/// The prompt text of `messages`. Throws troupe::error for another role (naming the message).
std::string deepseek_chat_prompt(const std::vector<chat_message>& messages, std::string_view bos,
                                 std::string_view eos, bool add_generation_prompt = true);

}  // namespace troupe
