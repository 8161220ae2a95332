#include "runtime/data/bpe_text.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "runtime/core/error.hpp"

namespace troupe::bpe_detail {

std::array<char32_t, 256> byte_symbols() {
  std::array<char32_t, 256> symbol{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    symbol[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
  }
  return symbol;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

std::size_t invalid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t length = c < 0x80                ? 1
                               : c >= 0xC2 && c < 0xE0 ? 2
                               : c >= 0xE0 && c < 0xF0 ? 3
                               : c >= 0xF0 && c < 0xF5 ? 4
                                                       : 0;
    if (length == 0 || i + length > s.size()) return i;
    char32_t value = length == 1 ? c : c & (0x7F >> length);
    for (std::size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(s[i + k]);
      if ((next & 0xC0) != 0x80) return i;
      value = (value << 6) | (next & 0x3F);
    }
    if ((length == 3 && (value < 0x800 || (value >= 0xD800 && value < 0xE000))) ||
        (length == 4 && (value < 0x10000 || value > 0x10FFFF)))
      return i;
    i += length;
  }
  return std::string_view::npos;
}

std::vector<char32_t> code_points(std::string_view s) {
  std::vector<char32_t> out;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int extra = c < 0x80 ? 0 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
    char32_t value = extra == 0 ? c : c & (0x3F >> extra);
    for (int k = 1; k <= extra && i + static_cast<std::size_t>(k) < s.size(); ++k)
      value =
          (value << 6) | (static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]) & 0x3F);
    out.push_back(value);
    i += static_cast<std::size_t>(extra) + 1;
  }
  return out;
}

regex::regex(const std::string& pattern, bool literal, const std::string& where) {
  int code = 0;
  PCRE2_SIZE offset = 0;
  const std::uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0u);
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                        &code, &offset, nullptr);
  if (code_ == nullptr) {
    std::array<PCRE2_UCHAR, 256> message{};
    pcre2_get_error_message(code, message.data(), message.size());
    fail("{}: the expression does not compile at character {}: {}", where, offset,
         reinterpret_cast<const char*>(message.data()));
  }
  (void)pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // the interpreter where JIT is absent
}

regex::~regex() {
  pcre2_code_free(code_);
}

std::vector<std::pair<std::size_t, std::size_t>> regex::matches(std::string_view text) const {
  // NOTES: PCRE2_NO_UTF_CHECK: without it PCRE2 validates the subject from the start offset to
  // the end on every call, which is quadratic in the text over all the matches.
  std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> match(
      pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
  if (!match) fail("tokenizer: out of memory for a match");
  std::vector<std::pair<std::size_t, std::size_t>> out;
  std::size_t at = 0;
  while (at <= text.size()) {
    const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), at,
                               PCRE2_NO_UTF_CHECK, match.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) fail("tokenizer: a pre-tokenizer expression failed on the text (PCRE2 {})", rc);
    const PCRE2_SIZE* v = pcre2_get_ovector_pointer(match.get());
    if (v[1] > v[0]) {
      out.emplace_back(v[0], v[1]);
      at = v[1];
    } else {  // an empty match: step over one character
      at = v[0] + 1;
      while (at < text.size() && (static_cast<unsigned char>(text[at]) & 0xC0) == 0x80) ++at;
    }
  }
  return out;
}

void added_matcher::add(const std::string& content, std::int32_t id) {
  std::size_t node = 0;
  for (unsigned char c : content) {
    auto it = nodes_[node].next.find(c);
    if (it == nodes_[node].next.end()) {
      nodes_.push_back({});
      it = nodes_[node].next.emplace(c, nodes_.size() - 1).first;
    }
    node = it->second;
  }
  nodes_[node].id = id;
}

std::pair<std::size_t, std::int32_t> added_matcher::longest(std::string_view text,
                                                            std::size_t at) const {
  std::size_t node = 0, best = 0;
  std::int32_t id = -1;
  for (std::size_t i = at; i < text.size(); ++i) {
    const auto it = nodes_[node].next.find(static_cast<unsigned char>(text[i]));
    if (it == nodes_[node].next.end()) break;
    node = it->second;
    if (nodes_[node].id >= 0) {
      best = i + 1 - at;
      id = nodes_[node].id;
    }
  }
  return {best, id};
}

}  // namespace troupe::bpe_detail
