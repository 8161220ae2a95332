// The training data path: corpus formats and their errors, the byte tokenizer and its special
// tokens, Fill-in-the-Middle in PSM form, packing (targets are the next tokens, documents end in
// EOS), and a stream position that resumes exactly.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <functional>

#include <filesystem>
#include <fstream>

#include "runtime/core/error.hpp"
#include "runtime/data/byte_tokenizer.hpp"
#include "runtime/data/text_corpus.hpp"
#include "runtime/data/token_stream.hpp"
#include "tests/support/command_runs.hpp"

namespace {

using namespace troupe;
namespace fs = std::filesystem;

model_config byte_model() {
  model_config config;
  config.vocab_size = 264;
  config.bos_token_id = 256;
  config.eos_token_id = 257;
  return config;
}

fs::path scratch(const std::string& name) {
  return troupe::testing::scratch_dir("data-test", name);
}

void write(const fs::path& file, const std::string& text) {
  std::ofstream(file) << text;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(TextCorpus, BuiltinIsTheJargonFile) {
  const text_corpus corpus = text_corpus::load("builtin");
  EXPECT_GT(corpus.size(), 2000u);
  EXPECT_GT(corpus.bytes(), 1'000'000u);
  EXPECT_LE(corpus.bytes(), 4'000'000u);
  for (std::size_t i = 0; i < corpus.size(); ++i) ASSERT_FALSE(corpus.document(i).empty());
}

TEST(TextCorpus, FormFeedSeparatedFile) {
  const fs::path dir = scratch("ff");
  write(dir / "c.txt", "first doc\nline two\n\f\nsecond\n\f\n\f\nthird");
  const text_corpus corpus = text_corpus::load((dir / "c.txt").string());
  ASSERT_EQ(corpus.size(), 3u);
  EXPECT_EQ(corpus.document(0), "first doc\nline two\n");
  EXPECT_EQ(corpus.document(1), "second\n");
  EXPECT_EQ(corpus.document(2), "third");
}

TEST(TextCorpus, JsonLinesAndTheirErrors) {
  const fs::path dir = scratch("jsonl");
  write(dir / "ok.jsonl", "{\"text\": \"alpha\"}\n\n{\"text\": \"beta\", \"id\": 2}\n");
  const text_corpus corpus = text_corpus::load((dir / "ok.jsonl").string());
  ASSERT_EQ(corpus.size(), 2u);
  EXPECT_EQ(corpus.document(1), "beta");

  write(dir / "bad.jsonl", "{\"text\": \"alpha\"}\n{\"body\": 1}\n");
  EXPECT_THAT(error_of([&] { text_corpus::load((dir / "bad.jsonl").string()); }),
              ::testing::HasSubstr("bad.jsonl:2: each line must be a JSON object"));
  write(dir / "broken.jsonl", "{\"text\": \"alpha\"}\n{\"text\": \n");
  EXPECT_THAT(error_of([&] { text_corpus::load((dir / "broken.jsonl").string()); }),
              ::testing::HasSubstr("broken.jsonl:2: not JSON"));
}

TEST(TextCorpus, DirectoryOfFilesSortedByName) {
  const fs::path dir = scratch("dir");
  write(dir / "b.txt", "bee");
  write(dir / "a.txt", "ay");
  const text_corpus corpus = text_corpus::load(dir.string());
  ASSERT_EQ(corpus.size(), 2u);
  EXPECT_EQ(corpus.document(0), "ay");
  EXPECT_EQ(corpus.document(1), "bee");
}

TEST(TextCorpus, MissingAndEmptySourcesAreErrors) {
  EXPECT_THAT(error_of([] { text_corpus::load("/nonexistent/corpus.txt"); }),
              ::testing::HasSubstr("/nonexistent/corpus.txt"));
  const fs::path dir = scratch("empty");
  write(dir / "e.txt", "\f\n");
  EXPECT_THAT(error_of([&] { text_corpus::load((dir / "e.txt").string()); }),
              ::testing::HasSubstr("no documents"));
}

TEST(ByteTokenizer, BytesRoundTripAndSpecialsFollowTheConfig) {
  const byte_tokenizer tokenizer(byte_model());
  EXPECT_EQ(tokenizer.specials().bos, 256);
  EXPECT_EQ(tokenizer.specials().eos, 257);
  EXPECT_EQ(tokenizer.specials().fim_prefix, 258);
  EXPECT_EQ(tokenizer.specials().fim_suffix, 259);
  EXPECT_EQ(tokenizer.specials().fim_middle, 260);
  std::vector<std::int32_t> tokens;
  const std::string text = "caf\xc3\xa9 \x01\xff";
  tokenizer.encode(text, tokens);
  ASSERT_EQ(tokens.size(), text.size());
  EXPECT_EQ(tokens[3], 0xc3);
  EXPECT_EQ(tokens.back(), 0xff);
  EXPECT_EQ(tokenizer.decode(tokens), text);
  tokens.push_back(257);
  EXPECT_EQ(tokenizer.decode(tokens), text + "<eos>");
}

TEST(ByteTokenizer, VocabularyTooSmallOrSpecialsAmongBytes) {
  model_config small = byte_model();
  small.vocab_size = 200;
  EXPECT_THAT(error_of([&] { byte_tokenizer{small}; }), ::testing::HasSubstr("vocab_size"));
  model_config clash = byte_model();
  clash.eos_token_id = 10;
  EXPECT_THAT(error_of([&] { byte_tokenizer{clash}; }), ::testing::HasSubstr("eos_token_id"));
}

TEST(TokenStream, PackingTargetsAreTheNextTokensAndDocumentsEndInEos) {
  const text_corpus corpus = text_corpus::from_documents({"abc", "defgh", "ij"});
  const byte_tokenizer tokenizer(byte_model());
  token_stream stream(corpus, tokenizer, 0.0, 7);
  // The whole epoch, concatenated as the stream sees it.
  std::vector<std::int32_t> expected;
  for (std::uint64_t d = 0; d < 3; ++d) {
    const auto& doc = stream.document_tokens(0, d);
    EXPECT_EQ(doc.back(), 257);
    expected.insert(expected.end(), doc.begin(), doc.end());
  }
  EXPECT_EQ(expected.size(), 13u);  // 10 bytes and 3 EOS
  std::vector<std::int32_t> tokens(2 * 4), targets(2 * 4);
  stream.next_batch(2, 4, tokens.data(), targets.data());
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(tokens[i], expected[i]) << i;
    EXPECT_EQ(targets[i], expected[i + 1]) << i;
  }
  // Documents are packed without padding: the third sequence starts at token 8.
  stream.next_batch(1, 4, tokens.data(), targets.data());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(tokens[i], expected[8 + i]);
}

TEST(TokenStream, FimInPsmFormAtTheConfiguredRate) {
  std::vector<std::string> docs;
  for (int i = 0; i < 400; ++i) docs.push_back("document number " + std::to_string(i));
  const text_corpus corpus = text_corpus::from_documents(docs);
  const byte_tokenizer tokenizer(byte_model());
  token_stream stream(corpus, tokenizer, 0.1, 11);
  int fim = 0;
  for (std::uint64_t d = 0; d < docs.size(); ++d) {
    const auto& tokens = stream.document_tokens(0, d);
    if (tokens.front() != 258) continue;
    ++fim;
    // <fim_prefix> P <fim_suffix> S <fim_middle> M <eos>, and P + M + S is some document.
    const auto suffix = std::find(tokens.begin(), tokens.end(), 259);
    const auto middle = std::find(tokens.begin(), tokens.end(), 260);
    ASSERT_TRUE(suffix != tokens.end() && middle != tokens.end() && suffix < middle);
    EXPECT_EQ(tokens.back(), 257);
    std::string restored;
    for (auto it = tokens.begin() + 1; it != suffix; ++it) restored += static_cast<char>(*it);
    for (auto it = middle + 1; it != tokens.end() - 1; ++it) restored += static_cast<char>(*it);
    for (auto it = suffix + 1; it != middle; ++it) restored += static_cast<char>(*it);
    EXPECT_NE(std::find(docs.begin(), docs.end(), restored), docs.end()) << restored;
  }
  // 400 Bernoulli(0.1) draws: 40 expected, sd 6.
  EXPECT_GE(fim, 20);
  EXPECT_LE(fim, 60);
}

TEST(TokenStream, DeterministicAndResumesFromItsPosition) {
  const text_corpus corpus = text_corpus::load("builtin");
  const byte_tokenizer tokenizer(byte_model());
  token_stream a(corpus, tokenizer, 0.1, 99), b(corpus, tokenizer, 0.1, 99);
  std::vector<std::int32_t> ta(3 * 64), ya(3 * 64), tb(3 * 64), yb(3 * 64);
  for (int i = 0; i < 5; ++i) a.next_batch(3, 64, ta.data(), ya.data());
  const data_position saved = a.position();
  a.next_batch(3, 64, ta.data(), ya.data());

  b.seek(saved);
  b.next_batch(3, 64, tb.data(), yb.data());
  EXPECT_EQ(ta, tb);
  EXPECT_EQ(ya, yb);

  token_stream other_seed(corpus, tokenizer, 0.1, 100);
  other_seed.next_batch(3, 64, tb.data(), yb.data());
  token_stream same_seed(corpus, tokenizer, 0.1, 99);
  same_seed.next_batch(3, 64, ta.data(), ya.data());
  EXPECT_NE(ta, tb);

  data_position bad = saved;
  bad.document = corpus.size();
  EXPECT_THAT(error_of([&] { b.seek(bad); }), ::testing::HasSubstr("data position"));
}

TEST(TokenStream, WrapsIntoTheNextEpochInANewOrder) {
  const text_corpus corpus = text_corpus::from_documents({"a", "b", "c", "d", "e", "f"});
  const byte_tokenizer tokenizer(byte_model());
  token_stream stream(corpus, tokenizer, 0.0, 3);
  std::vector<std::int32_t> tokens(12), targets(12);
  stream.next_batch(1, 12, tokens.data(), targets.data());  // 6 docs x 2 tokens: one epoch
  EXPECT_EQ(stream.position().epoch, 1u);
  EXPECT_EQ(stream.position().document, 0u);
  std::string first, second;
  for (std::uint64_t d = 0; d < 6; ++d) {
    first += static_cast<char>(stream.document_tokens(0, d)[0]);
    second += static_cast<char>(stream.document_tokens(1, d)[0]);
  }
  std::string sorted_first = first, sorted_second = second;
  std::sort(sorted_first.begin(), sorted_first.end());
  std::sort(sorted_second.begin(), sorted_second.end());
  EXPECT_EQ(sorted_first, "abcdef");
  EXPECT_EQ(sorted_second, "abcdef");
  EXPECT_NE(first, second);
}

}  // namespace
