#pragma once

// The text machinery under bpe_tokenizer (runtime/data/bpe_tokenizer.hpp): GPT-2's byte-level
// alphabet, UTF-8 checks, the pre-tokenizer's regular expressions (PCRE2 with Unicode
// properties) and the longest match of added tokens. Internal to runtime/data.

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct pcre2_real_code_8;

namespace troupe::bpe_detail {

/// GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for the code
/// points from 256 on, in byte order. byte_symbols()[b] is the code point of byte b.
std::array<char32_t, 256> byte_symbols();
void append_utf8(std::string& out, char32_t c);
/// The offset of the first byte that is not part of valid UTF-8 (overlong forms, surrogates and
/// code points past U+10FFFF included), or npos.
std::size_t invalid_utf8(std::string_view s);
/// The code points of a UTF-8 string (the vocabulary's spellings are valid UTF-8).
std::vector<char32_t> code_points(std::string_view s);

/// A compiled PCRE2 expression (UTF, Unicode properties for \s, \w and the classes, JIT when
/// the library has it).
class regex {
 public:
  /// Throws troupe::error "<where>: the expression does not compile at character N: ...".
  regex(const std::string& pattern, bool literal, const std::string& where);
  ~regex();
  regex(const regex&) = delete;
  regex& operator=(const regex&) = delete;
  /// The [begin, end) byte ranges of the matches in `text` (valid UTF-8: encode() checked it),
  /// left to right, not overlapping. Match data per call: encode() may run on several threads.
  std::vector<std::pair<std::size_t, std::size_t>> matches(std::string_view text) const;

 private:
  pcre2_real_code_8* code_ = nullptr;
};

/// One Split pre-tokenizer with behavior "Isolated": every match a piece, and every gap between
/// matches.
struct split_rule {
  std::unique_ptr<regex> pattern;
};

/// GPT-2's expression: what a ByteLevel pre-tokenizer with use_regex splits by.
inline constexpr const char* gpt2_pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

/// A trie over the added tokens' bytes: the longest token starting at a position.
class added_matcher {
 public:
  void add(const std::string& content, std::int32_t id);
  /// (length, id) of the longest added token at text[at], or length 0.
  std::pair<std::size_t, std::int32_t> longest(std::string_view text, std::size_t at) const;

 private:
  struct trie_node {
    std::map<unsigned char, std::size_t> next;
    std::int32_t id = -1;
  };
  std::vector<trie_node> nodes_{trie_node{}};
};

}  // namespace troupe::bpe_detail
