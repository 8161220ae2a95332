// libFuzzer target: any bytes as text for DeepSeek-V3's tokenizer (the test fixture's
// tokenizer.json). Valid UTF-8 encodes and decodes back to itself; anything else is a
// troupe::error that says where the UTF-8 breaks, never a crash or a different text.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "runtime/core/error.hpp"
#include "runtime/data/bpe_tokenizer.hpp"

namespace {

const troupe::bpe_tokenizer& tokenizer() {
  static const troupe::bpe_tokenizer t = [] {
    const char* source = std::getenv("TROUPE_SOURCE_DIR");
    const std::filesystem::path root = source != nullptr ? source : ".";
    return troupe::bpe_tokenizer::load(root / "tests/fixtures/tokenizer/deepseek-v3");
  }();
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto ids = tokenizer().encode(text);
    if (tokenizer().decode(ids) != text) __builtin_trap();
  } catch (const troupe::error& e) {
    if (std::string_view(e.what()).find("not valid UTF-8") == std::string_view::npos)
      __builtin_trap();
  }
  return 0;
}
