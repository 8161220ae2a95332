// DeepSeek-V3's tokenizer (byte-level BPE from tokenizer.json) against Hugging Face `tokenizers`
// on 3,000 strings (tests/fixtures/tokenizer, made by tools/reference/make_tokenizer_fixture.py):
// the same ids for every string, the same text back; and the errors a bad tokenizer file gets.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/data/bpe_tokenizer.hpp"
#include "runtime/data/chat_prompt.hpp"
#include "tests/support/fixtures.hpp"

namespace {

using namespace troupe;
namespace fs = std::filesystem;

fs::path fixture_dir() {
  return troupe::testing::source_dir() / "tests/fixtures/tokenizer";
}

const bpe_tokenizer& deepseek() {
  static const bpe_tokenizer tokenizer = bpe_tokenizer::load(fixture_dir() / "deepseek-v3");
  return tokenizer;
}

TEST(BpeTokenizer, EncodesAndDecodesAsHuggingFaceTokenizers) {
  const nlohmann::json fixture = troupe::testing::read_json(fixture_dir() / "cases.json");
  const auto& cases = fixture.at("cases");
  ASSERT_GE(cases.size(), 3000u);
  std::size_t tokens = 0, mismatches = 0;
  for (const auto& c : cases) {
    const auto text = c.at("text").get<std::string>();
    const auto expected = c.at("ids").get<std::vector<std::int32_t>>();
    const std::vector<std::int32_t> ids = deepseek().encode(text);
    tokens += ids.size();
    if (ids != expected && ++mismatches <= 5)
      ADD_FAILURE() << "encode differs from tokenizers " << fixture.at("tokenizers") << " for '"
                    << text << "'";
    EXPECT_EQ(deepseek().decode(expected), c.at("decoded").get<std::string>()) << text;
    EXPECT_EQ(deepseek().decode(ids), text);
  }
  EXPECT_EQ(mismatches, 0u) << "of " << cases.size() << " strings";
  std::printf("[ tokenizer ] %zu strings, %zu tokens, %zu differ from tokenizers\n", cases.size(),
              tokens, mismatches);
}

TEST(BpeTokenizer, ReadsTheSpecialTokensOfTheConfig) {
  const bpe_tokenizer& t = deepseek();
  EXPECT_EQ(t.vocab_size(), 129280);  // DeepSeek-V3's vocab_size
  ASSERT_TRUE(t.bos() && t.eos());
  EXPECT_EQ(*t.bos(), 0);
  EXPECT_EQ(*t.eos(), 1);
  EXPECT_EQ(t.id_of("<｜end▁of▁sentence｜>"), 1);
  EXPECT_EQ(t.encode("a<｜end▁of▁sentence｜>b"),
            (std::vector<std::int32_t>{*t.id_of("a"), 1, *t.id_of("b")}));
  EXPECT_FALSE(t.id_of("no such token"));
  for (const std::string& bad : {std::string("ok\xff"), std::string("\xc3"),
                                 std::string("\xed\xa0\x80"), std::string("\xc0\xaf")}) {
    try {
      (void)t.encode(bad);
      ADD_FAILURE() << "no error for invalid UTF-8";
    } catch (const error& e) {
      EXPECT_NE(std::string(e.what()).find("not valid UTF-8"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW((void)t.decode(std::vector<std::int32_t>{129280}), error);
  EXPECT_THROW((void)t.decode(std::vector<std::int32_t>{-1}), error);
}

TEST(BpeTokenizer, ChatPromptsKeepTheirSpecialTokens) {
  const bpe_tokenizer& t = deepseek();
  const std::string bos = "<｜begin▁of▁sentence｜>", eos = "<｜end▁of▁sentence｜>";
  const std::vector<chat_message> chat{
      {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "2+2?"}};
  const std::string prompt = deepseek_chat_prompt(chat, bos, eos);
  EXPECT_EQ(prompt, bos + "Be brief.<｜User｜>Hi<｜Assistant｜>Hello." + eos +
                        "<｜User｜>2+2?<｜Assistant｜>");
  const auto ids = t.encode(prompt);
  EXPECT_EQ(ids.front(), *t.bos());
  EXPECT_EQ(ids.back(), *t.id_of("<｜Assistant｜>"));
  EXPECT_EQ(std::count(ids.begin(), ids.end(), *t.eos()), 1);
  EXPECT_EQ(t.decode(ids), prompt);
  EXPECT_THROW((void)deepseek_chat_prompt({{"tool", "x"}}, bos, eos), error);
}

TEST(BpeTokenizer, LongPiecesAndThreadsCostNoMoreThanTheyShould) {
  // One piece of 300,000 bytes (a run of CJK, a run of spaces) and a text of 100,000 words: the
  // merges and the pre-tokenizer stay near-linear (n^2 would take minutes here).
  std::string cjk, words;
  for (int i = 0; i < 100000; ++i) cjk += "深";
  for (int i = 0; i < 100000; ++i) words += (i % 7 == 0 ? "\n" : " ") + std::string("word");
  const std::string spaces(300000, ' ');
  for (const std::string* text : std::vector<const std::string*>{&cjk, &spaces, &words}) {
    const auto ids = deepseek().encode(*text);
    EXPECT_EQ(deepseek().decode(ids), *text);
  }
  // encode() is const and shared: threads get what one thread gets.
  const nlohmann::json fixture = troupe::testing::read_json(fixture_dir() / "cases.json");
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (const auto& c : fixture.at("cases"))
        if (deepseek().encode(c.at("text").get<std::string>()) !=
            c.at("ids").get<std::vector<std::int32_t>>())
          ++wrong;
    });
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
}

/// A scratch copy of the fixture's tokenizer.json with `edit` applied to its JSON.
fs::path edited(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
  static const nlohmann::json original =
      troupe::testing::read_json(fixture_dir() / "deepseek-v3" / "tokenizer.json");
  const fs::path dir =
      fs::temp_directory_path() / ("troupe-tokenizer-test-" + std::to_string(::getpid())) / name;
  fs::create_directories(dir);
  nlohmann::json j = original;
  edit(j);
  std::ofstream(dir / "tokenizer.json") << j.dump();
  return dir;
}

void expect_error(const fs::path& path, const std::vector<std::string>& parts) {
  try {
    (void)bpe_tokenizer::load(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const error& e) {
    for (const auto& part : parts)
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(BpeTokenizer, BadFilesAreErrorsThatNameTheFileAndTheKey) {
  expect_error(fs::temp_directory_path() / "troupe-no-such-dir", {"troupe-no-such-dir", "no such"});
  expect_error(fs::temp_directory_path(), {"has no tokenizer.json"});
  const fs::path broken =
      fs::temp_directory_path() / ("troupe-tokenizer-broken-" + std::to_string(::getpid()));
  fs::create_directories(broken);
  std::ofstream(broken / "tokenizer.json") << "{\"model\": {\"type\": \"BPE\", ";
  expect_error(broken, {"tokenizer.json", "not valid JSON", "byte"});
  expect_error(edited("wordpiece", [](auto& j) { j["model"]["type"] = "WordPiece"; }),
               {"model.type", "WordPiece"});
  expect_error(edited("normalizer",
                      [](auto& j) {
                        j["normalizer"] = {{"type", "NFKC"}};
                      }),
               {"normalizer", "NFKC"});
  expect_error(
      edited("whitespace",
             [](auto& j) { j["pre_tokenizer"]["pretokenizers"][1]["type"] = "Whitespace"; }),
      {"pre_tokenizer[1]", "Whitespace"});
  expect_error(edited("regex",
                      [](auto& j) {
                        j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(\\p{N}";
                      }),
               {"pre_tokenizer[0]", "does not compile"});
  expect_error(edited("merge", [](auto& j) { j["model"]["merges"][7] = "nosuch token"; }),
               {"model.merges[7]", "nosuch"});
  expect_error(edited("bytes", [](auto& j) { j["model"]["vocab"].erase("Ġ"); }),
               {"byte 32", "byte-level"});
  expect_error(edited("sparse", [](auto& j) { j["added_tokens"][0]["id"] = 2000000000; }),
               {"not dense"});
  expect_error(edited("huge", [](auto& j) { j["added_tokens"][0]["id"] = 9223372036854775807LL; }),
               {"added_tokens[0]", "2^31"});
  expect_error(edited("null-flag", [](auto& j) { j["added_tokens"][1]["lstrip"] = nullptr; }),
               {"tokenizer.json", "unexpected type"});
  expect_error(
      edited("added-object", [](auto& j) { j["added_tokens"] = nlohmann::json::object(); }),
      {"added_tokens", "expected an array"});
  fs::remove_all(fs::temp_directory_path() /
                 ("troupe-tokenizer-test-" + std::to_string(::getpid())));
  fs::remove_all(broken);
}

}  // namespace
