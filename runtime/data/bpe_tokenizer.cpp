#include "runtime/data/bpe_tokenizer.hpp"

#include <array>
#include <fstream>
#include <limits>
#include <queue>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/data/bpe_text.hpp"

namespace troupe {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const json& member(const json& object, const char* key, const std::string& where) {
  if (!object.is_object() || !object.contains(key)) fail("{}: '{}' is missing", where, key);
  return object.at(key);
}

std::string type_of(const json& object, const std::string& where) {
  const json& t = member(object, "type", where);
  if (!t.is_string()) fail("{}.type: expected a string", where);
  return t.get<std::string>();
}

}  // namespace

using bpe_detail::added_matcher;
using bpe_detail::append_utf8;
using bpe_detail::byte_symbols;
using bpe_detail::code_points;
using bpe_detail::gpt2_pattern;
using bpe_detail::invalid_utf8;
using bpe_detail::regex;
using bpe_detail::split_rule;

struct bpe_tokenizer::state {
  fs::path file;
  std::unordered_map<std::string, std::int32_t> vocab;  ///< byte-level spelling -> id
  std::vector<std::string> spelling;                    ///< id -> its decoded bytes
  std::vector<bool> is_added;
  std::array<std::int32_t, 256> byte_id{};       ///< the id of each byte's symbol
  std::array<std::string, 256> byte_spelling{};  ///< each byte's symbol in UTF-8
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges;  ///< rank, id
  std::vector<split_rule> splits;
  added_matcher added;
  bool ignore_merges = false;
  std::optional<std::int32_t> bos, eos;
  bool add_bos = false;
  std::string chat_template;

  static std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) |
           static_cast<std::uint32_t>(b);
  }

  /// The ids of one pre-tokenized piece: its bytes' symbols, merged in rank order (the lowest
  /// rank first, the leftmost of equal ranks first), as `tokenizers`' BPE does.
  void encode_piece(std::string_view piece, std::vector<std::int32_t>& out) const {
    std::vector<std::int32_t> symbols;
    symbols.reserve(piece.size());
    for (unsigned char c : piece) symbols.push_back(byte_id[c]);
    if (ignore_merges && symbols.size() > 1) {
      std::string spelled;
      for (unsigned char c : piece) spelled += byte_spelling[c];
      if (auto it = vocab.find(spelled); it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    merge_all(symbols);
    out.insert(out.end(), symbols.begin(), symbols.end());
  }

  /// Applies the merges to `symbols` in rank order, the leftmost of equal ranks first: a heap of
  /// candidate pairs over a linked list of symbols (tokenizers' Word::merge_all), so a long piece
  /// costs n log n, not n squared. A candidate whose symbols changed since it was pushed is
  /// stale and skipped.
  void merge_all(std::vector<std::int32_t>& symbols) const {
    const auto n = static_cast<std::int32_t>(symbols.size());
    if (n < 2) return;
    std::vector<std::int32_t> next(static_cast<std::size_t>(n)), prev(static_cast<std::size_t>(n));
    for (std::int32_t i = 0; i < n; ++i) {
      next[static_cast<std::size_t>(i)] = i + 1 < n ? i + 1 : -1;
      prev[static_cast<std::size_t>(i)] = i - 1;
    }
    struct candidate {
      std::int32_t rank, left, left_id, right_id;
      bool operator>(const candidate& o) const {
        return rank != o.rank ? rank > o.rank : left > o.left;
      }
    };
    std::priority_queue<candidate, std::vector<candidate>, std::greater<>> heap;
    const auto push = [&](std::int32_t left) {
      if (left < 0) return;  // the first symbol has no left neighbour
      const std::int32_t right = next[static_cast<std::size_t>(left)];
      if (right < 0) return;
      const std::int32_t a = symbols[static_cast<std::size_t>(left)],
                         b = symbols[static_cast<std::size_t>(right)];
      if (const auto it = merges.find(pair_key(a, b)); it != merges.end())
        heap.push({it->second.first, left, a, b});
    };
    for (std::int32_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      const candidate c = heap.top();
      heap.pop();
      const std::int32_t right = next[static_cast<std::size_t>(c.left)];
      if (right < 0 || symbols[static_cast<std::size_t>(c.left)] != c.left_id ||
          symbols[static_cast<std::size_t>(right)] != c.right_id)
        continue;  // stale
      symbols[static_cast<std::size_t>(c.left)] = merges.at(pair_key(c.left_id, c.right_id)).second;
      symbols[static_cast<std::size_t>(right)] = -1;  // gone
      next[static_cast<std::size_t>(c.left)] = next[static_cast<std::size_t>(right)];
      if (next[static_cast<std::size_t>(c.left)] >= 0)
        prev[static_cast<std::size_t>(next[static_cast<std::size_t>(c.left)])] = c.left;
      push(prev[static_cast<std::size_t>(c.left)]);
      push(c.left);
    }
    std::vector<std::int32_t> kept;
    kept.reserve(symbols.size());
    for (std::int32_t i = 0; i >= 0; i = next[static_cast<std::size_t>(i)])
      kept.push_back(symbols[static_cast<std::size_t>(i)]);
    symbols.swap(kept);
  }

  /// Applies the Split rules one after another to `text` (no added tokens in it).
  void pre_tokenize(std::string_view text, std::vector<std::string_view>& pieces) const {
    pieces.assign(1, text);
    std::vector<std::string_view> next;
    for (const split_rule& rule : splits) {
      next.clear();
      for (std::string_view piece : pieces) {
        std::size_t at = 0;
        for (const auto& [begin, end] : rule.pattern->matches(piece)) {
          if (begin > at) next.push_back(piece.substr(at, begin - at));
          next.push_back(piece.substr(begin, end - begin));
          at = end;
        }
        if (at < piece.size()) next.push_back(piece.substr(at));
      }
      pieces.swap(next);
    }
  }
};

bpe_tokenizer::bpe_tokenizer(std::unique_ptr<state> s) : s_(std::move(s)) {}
bpe_tokenizer::bpe_tokenizer(bpe_tokenizer&&) noexcept = default;
bpe_tokenizer& bpe_tokenizer::operator=(bpe_tokenizer&&) noexcept = default;
bpe_tokenizer::~bpe_tokenizer() = default;

namespace {

json read_json(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("{}: cannot open the file", file.string());
  try {
    return json::parse(in);
  } catch (const json::parse_error& e) {
    fail("{}: not valid JSON (byte {}): {}", file.string(), e.byte, e.what());
  }
}

/// bos_token / eos_token of tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> token_text(const json& config, const char* key) {
  if (!config.contains(key) || config.at(key).is_null()) return std::nullopt;
  const json& v = config.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string())
    return v.at("content").get<std::string>();
  return std::nullopt;
}

}  // namespace

bpe_tokenizer bpe_tokenizer::load(const fs::path& path) {
  std::string reading = path.string();  // the file read() is in
  try {
    return read(path, reading);
  } catch (const json::exception& e) {  // a key of an unexpected type, read with a default
    fail("{}: a key has an unexpected type: {}", reading, e.what());
  }
}

bpe_tokenizer bpe_tokenizer::read(const fs::path& path, std::string& reading) {
  auto s = std::make_unique<state>();
  if (!fs::exists(path))
    fail("{}: no such file or directory (give a tokenizer.json or the directory holding one)",
         path.string());
  const fs::path file = fs::is_directory(path) ? path / "tokenizer.json" : path;
  if (!fs::exists(file)) fail("{}: the directory has no tokenizer.json", path.string());
  s->file = file;
  const std::string name = file.string();
  reading = name;
  const json root = read_json(file);
  if (!root.is_object()) fail("{}: expected a JSON object at the top", name);

  // The model: byte-level BPE without the options that change what it computes.
  const json& model = member(root, "model", name);
  const std::string model_type = type_of(model, name + ": model");
  if (model_type != "BPE")
    fail("{}: model.type is '{}'; troupe reads byte-level BPE tokenizers", name, model_type);
  for (const char* key : {"dropout", "continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && !model.at(key).is_null())
      fail("{}: model.{} is set; troupe's BPE supports none", name, key);
  if (model.value("byte_fallback", false))
    fail("{}: model.byte_fallback is true; troupe's BPE is byte-level and needs none", name);
  s->ignore_merges = model.value("ignore_merges", false);
  const json& vocab = member(model, "vocab", name + ": model");
  if (!vocab.is_object()) fail("{}: model.vocab: expected an object of token -> id", name);
  std::int64_t size = 0;
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0 ||
        id.get<std::int64_t>() > std::numeric_limits<std::int32_t>::max())
      fail("{}: model.vocab['{}']: the id must be a non-negative 32-bit integer", name, token);
    s->vocab.emplace(token, id.get<std::int32_t>());
    size = std::max(size, id.get<std::int64_t>() + 1);
  }
  const json& added = root.contains("added_tokens") ? root.at("added_tokens") : json::array();
  if (!added.is_array()) fail("{}: added_tokens: expected an array", name);
  for (std::size_t i = 0; i < added.size(); ++i) {
    const std::string where = fmt::format("{}: added_tokens[{}]", name, i);
    const json& t = added[i];
    const json& id = member(t, "id", where);
    const json& content = member(t, "content", where);
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0 ||
        id.get<std::int64_t>() > std::numeric_limits<std::int32_t>::max() || !content.is_string() ||
        content.get<std::string>().empty())
      fail("{}: expected an id in [0, 2^31) and non-empty content", where);
    for (const char* flag : {"single_word", "lstrip", "rstrip"})
      if (t.value(flag, false))
        fail("{}: '{}' is true; troupe matches added tokens exactly, without it", where, flag);
    size = std::max(size, id.get<std::int64_t>() + 1);
  }
  // Ids are dense in every real tokenizer; a sparse one would make the id tables huge.
  const auto entries = static_cast<std::int64_t>(s->vocab.size() + added.size());
  if (size > 2 * entries + 1024)
    fail("{}: the highest id is {} for {} tokens: the ids are not dense", name, size - 1, entries);
  s->spelling.assign(static_cast<std::size_t>(size), std::string());
  s->is_added.assign(static_cast<std::size_t>(size), false);

  // Byte-level symbols: every byte's symbol must be in the vocabulary.
  const auto symbols = byte_symbols();
  std::unordered_map<char32_t, unsigned char> byte_of;
  for (int b = 0; b < 256; ++b) {
    byte_of[symbols[static_cast<std::size_t>(b)]] = static_cast<unsigned char>(b);
    std::string spelled;
    append_utf8(spelled, symbols[static_cast<std::size_t>(b)]);
    const auto it = s->vocab.find(spelled);
    if (it == s->vocab.end())
      fail("{}: model.vocab has no symbol for byte {} ('{}'): not a byte-level vocabulary", name, b,
           spelled);
    s->byte_id[static_cast<std::size_t>(b)] = it->second;
    s->byte_spelling[static_cast<std::size_t>(b)] = spelled;
  }
  // A token's bytes, as tokenizers' ByteLevel decoder gives them: every character through the
  // byte alphabet, or the token's own UTF-8 when one character is outside it.
  const auto bytes_of = [&](const std::string& token) {
    std::string bytes;
    for (char32_t c : code_points(token)) {
      const auto it = byte_of.find(c);
      if (it == byte_of.end()) return token;
      bytes += static_cast<char>(it->second);
    }
    return bytes;
  };
  for (const auto& [token, id] : s->vocab)
    s->spelling[static_cast<std::size_t>(id)] = bytes_of(token);
  for (std::size_t i = 0; i < added.size(); ++i) {
    const auto id = added[i].at("id").get<std::int32_t>();
    const auto content = added[i].at("content").get<std::string>();
    s->spelling[static_cast<std::size_t>(id)] = bytes_of(content);
    s->is_added[static_cast<std::size_t>(id)] = true;
    s->added.add(content, id);
  }

  // Merges, "a b" or ["a", "b"], in rank order.
  const json& merges = member(model, "merges", name + ": model");
  if (!merges.is_array()) fail("{}: model.merges: expected an array", name);
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m = merges[rank];
    std::string left, right;
    if (m.is_string()) {
      const std::string text = m.get<std::string>();
      const std::size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos)
        fail("{}: model.merges[{}]: '{}' is not two tokens split by one space", name, rank, text);
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      fail("{}: model.merges[{}]: expected \"a b\" or [\"a\", \"b\"]", name, rank);
    }
    const auto a = s->vocab.find(left), b = s->vocab.find(right), ab = s->vocab.find(left + right);
    if (a == s->vocab.end() || b == s->vocab.end() || ab == s->vocab.end())
      fail("{}: model.merges[{}]: '{} {}' names a token the vocabulary does not have", name, rank,
           left, right);
    s->merges.emplace(state::pair_key(a->second, b->second),
                      std::pair{static_cast<std::int32_t>(rank), ab->second});
  }

  // The normalizer (none), the pre-tokenizer (Split rules and ByteLevel), the decoder.
  if (root.contains("normalizer") && !root.at("normalizer").is_null()) {
    const json& n = root.at("normalizer");
    const std::string t = type_of(n, name + ": normalizer");
    if (t != "Sequence" || !n.contains("normalizers") || !n.at("normalizers").empty())
      fail("{}: normalizer '{}' is not supported (troupe reads tokenizers without one)", name, t);
  }
  std::vector<json> pre;
  if (root.contains("pre_tokenizer") && !root.at("pre_tokenizer").is_null()) {
    const json& p = root.at("pre_tokenizer");
    if (type_of(p, name + ": pre_tokenizer") == "Sequence")
      for (const json& each : member(p, "pretokenizers", name + ": pre_tokenizer"))
        pre.push_back(each);
    else
      pre.push_back(p);
  }
  bool byte_level = false;
  for (std::size_t i = 0; i < pre.size(); ++i) {
    const std::string where = fmt::format("{}: pre_tokenizer[{}]", name, i);
    const std::string t = type_of(pre[i], where);
    if (t == "Split") {
      if (byte_level) fail("{}: a Split after ByteLevel is not supported", where);
      const std::string behavior = pre[i].value("behavior", "");
      if (behavior != "Isolated" || pre[i].value("invert", false))
        fail("{}: Split with behavior '{}'{} is not supported (Isolated only)", where, behavior,
             pre[i].value("invert", false) ? " inverted" : "");
      const json& pattern = member(pre[i], "pattern", where);
      const bool literal = pattern.contains("String");
      const json& text =
          literal ? pattern.at("String") : member(pattern, "Regex", where + ".pattern");
      if (!text.is_string()) fail("{}.pattern: expected a string", where);
      s->splits.push_back({std::make_unique<regex>(text.get<std::string>(), literal, where)});
    } else if (t == "ByteLevel") {
      if (pre[i].value("add_prefix_space", false))
        fail("{}: ByteLevel with add_prefix_space is not supported", where);
      if (pre[i].value("use_regex", true))
        s->splits.push_back({std::make_unique<regex>(gpt2_pattern, false, where)});
      byte_level = true;
    } else {
      fail("{}: pre-tokenizer '{}' is not supported (Split and ByteLevel are)", where, t);
    }
  }
  if (!byte_level) fail("{}: the pre-tokenizer has no ByteLevel step: not a byte-level BPE", name);
  if (root.contains("decoder") && !root.at("decoder").is_null()) {
    const std::string t = type_of(root.at("decoder"), name + ": decoder");
    if (t != "ByteLevel") fail("{}: decoder '{}' is not supported (ByteLevel is)", name, t);
  }

  // tokenizer_config.json: BOS, EOS, whether a BOS starts a text, the chat template.
  const fs::path config_file = file.parent_path() / "tokenizer_config.json";
  if (fs::exists(config_file)) {
    reading = config_file.string();
    const json config = read_json(config_file);
    if (!config.is_object()) fail("{}: expected a JSON object", config_file.string());
    bpe_tokenizer view(std::move(s));
    for (auto [key, slot] : {std::pair{"bos_token", &view.s_->bos}, {"eos_token", &view.s_->eos}})
      if (const auto text = token_text(config, key)) {
        *slot = view.id_of(*text);
        if (!*slot)
          fail("{}: {} '{}' is not a token of {}", config_file.string(), key, *text, name);
      }
    view.s_->add_bos = config.value("add_bos_token", false);
    if (config.contains("chat_template") && config.at("chat_template").is_string())
      view.s_->chat_template = config.at("chat_template").get<std::string>();
    return view;
  }
  return bpe_tokenizer(std::move(s));
}

void bpe_tokenizer::encode(std::string_view text, std::vector<std::int32_t>& out) const {
  if (const std::size_t bad = invalid_utf8(text); bad != std::string_view::npos)
    fail("the text is not valid UTF-8 (byte {} of {})", bad, text.size());
  std::vector<std::string_view> pieces;
  std::size_t plain = 0;  // the start of the text since the last added token
  const auto flush = [&](std::size_t end) {
    if (end <= plain) return;
    s_->pre_tokenize(text.substr(plain, end - plain), pieces);
    for (std::string_view piece : pieces) s_->encode_piece(piece, out);
  };
  for (std::size_t at = 0; at < text.size();) {
    const auto [length, id] = s_->added.longest(text, at);
    if (length == 0) {
      ++at;
      continue;
    }
    flush(at);
    out.push_back(id);
    at += length;
    plain = at;
  }
  flush(text.size());
}

std::vector<std::int32_t> bpe_tokenizer::encode(std::string_view text) const {
  std::vector<std::int32_t> out;
  encode(text, out);
  return out;
}

std::string bpe_tokenizer::decode(std::span<const std::int32_t> ids) const {
  std::string out;
  for (std::int32_t id : ids) {
    if (id < 0 || static_cast<std::size_t>(id) >= s_->spelling.size())
      fail("token id {} is outside the vocabulary of {} (0 to {})", id, s_->file.string(),
           s_->spelling.size() - 1);
    out += s_->spelling[static_cast<std::size_t>(id)];
  }
  return out;
}

std::int64_t bpe_tokenizer::vocab_size() const {
  return static_cast<std::int64_t>(s_->spelling.size());
}

std::optional<std::int32_t> bpe_tokenizer::id_of(std::string_view token) const {
  const auto [length, id] = s_->added.longest(token, 0);
  if (length == token.size() && length > 0) return id;
  if (const auto it = s_->vocab.find(std::string(token)); it != s_->vocab.end()) return it->second;
  return std::nullopt;
}

std::optional<std::int32_t> bpe_tokenizer::bos() const {
  return s_->bos;
}
std::optional<std::int32_t> bpe_tokenizer::eos() const {
  return s_->eos;
}
bool bpe_tokenizer::add_bos() const {
  return s_->add_bos;
}
const std::string& bpe_tokenizer::chat_template() const {
  return s_->chat_template;
}

}  // namespace troupe
