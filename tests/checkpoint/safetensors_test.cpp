// safetensors reading and writing, Hugging Face model directories (single file, sharded, FP8
// with block scales), and the clear errors for corrupt, truncated and mismatched files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "kernels/cpu/fp8_quantize.hpp"
#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/checkpoint/safetensors.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/model/parameter_store.hpp"
#include "runtime/plugin/registry.hpp"
#include "runtime/tensor/bf16.hpp"
#include "runtime/tensor/e4m3.hpp"
#include "tests/support/fixtures.hpp"

namespace {

namespace fs = std::filesystem;
using namespace troupe;

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("troupe-safetensors-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  /// A file with this header text and `data_bytes` zero bytes of data.
  fs::path raw_file(const std::string& name, const std::string& header, std::size_t data_bytes,
                    std::int64_t claimed_length = -1) {
    const fs::path file = dir_ / name;
    std::ofstream out(file, std::ios::binary);
    const std::uint64_t length =
        claimed_length >= 0 ? static_cast<std::uint64_t>(claimed_length) : header.size();
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>(length >> (8 * i)));
    out << header << std::string(data_bytes, '\0');
    return file;
  }

  std::string error_of(const fs::path& file) {
    try {
      safetensors_file::open(file);
    } catch (const checkpoint_error& e) {
      return e.what();
    }
    ADD_FAILURE() << "opening " << file << " should fail";
    return "";
  }

  fs::path dir_;
};

TEST_F(Safetensors, WritesAndReadsEveryDtypeWithoutCopying) {
  std::vector<std::pair<std::string, tensor>> tensors;
  for (dtype type :
       {dtype::f32, dtype::bf16, dtype::f16, dtype::f8_e4m3, dtype::i32, dtype::i64, dtype::u8}) {
    tensor t = tensor::empty(type, {3, 5});
    auto* bytes = static_cast<unsigned char*>(t.data());
    for (std::size_t i = 0; i < t.nbytes(); ++i)
      bytes[i] = static_cast<unsigned char>(i * 7 + static_cast<int>(type));
    tensors.emplace_back(std::string("tensor.") + std::string(name_of(type)), t);
  }
  tensors.emplace_back("empty", tensor::empty(dtype::f32, {0, 4}));
  const fs::path file = dir_ / "all.safetensors";
  write_safetensors(file, tensors, {{"format", "pt"}});
  EXPECT_FALSE(fs::exists(dir_ / "all.safetensors.partial"));
  tensor view;
  {
    const auto opened = safetensors_file::open(file);
    EXPECT_EQ(opened.metadata().at("format"), "pt");
    EXPECT_EQ(opened.entries().size(), tensors.size());
    for (const auto& [name, expected] : tensors) {
      const tensor got = opened.get(name);
      EXPECT_EQ(got.type(), expected.type()) << name;
      EXPECT_EQ(got.shape(), expected.shape()) << name;
      EXPECT_EQ(std::memcmp(got.data(), expected.data(), expected.nbytes()), 0) << name;
    }
    view = opened.get("tensor.f32");
  }
  // The view outlives the file object: it keeps the mapping.
  EXPECT_EQ(std::memcmp(view.data(), tensors[0].second.data(), view.nbytes()), 0);
  // The data section starts 8-byte aligned.
  std::ifstream in(file, std::ios::binary);
  std::uint64_t length = 0;
  in.read(reinterpret_cast<char*>(&length), 8);
  EXPECT_EQ(length % 8, 0u);
}

TEST_F(Safetensors, CorruptTruncatedAndMismatchedFilesAreClearErrors) {
  auto expect = [&](const fs::path& file, const std::string& part) {
    const std::string message = error_of(file);
    EXPECT_NE(message.find(file.string()), std::string::npos) << message;
    EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
  };
  expect(dir_ / "missing.safetensors", "cannot open");
  { std::ofstream(dir_ / "short.safetensors") << "abc"; }
  expect(dir_ / "short.safetensors", "too short");
  expect(raw_file("huge-header.safetensors", "{}", 0, 1 << 20),
         "truncated or not a safetensors file");
  expect(raw_file("not-json.safetensors", "{not json", 0), "not valid JSON");
  expect(raw_file("array.safetensors", "[1, 2]", 0), "not a JSON object");
  expect(raw_file("fields.safetensors", R"({"w": {"dtype": "F32"}})", 0),
         "'w': needs dtype, shape and data_offsets");
  expect(raw_file("dtype.safetensors",
                  R"({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", 8),
         "dtype \"F64\" is not supported");
  expect(raw_file("shape.safetensors",
                  R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4),
         "bad extent");
  expect(raw_file("truncated.safetensors",
                  R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 10),
         "outside the 10-byte data section");
  expect(raw_file("size.safetensors",
                  R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", 16),
         "16 bytes for shape [3] of F32 (needs 12)");
  expect(raw_file("overlap.safetensors",
                  R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                  12),
         "overlap");
  // A real file cut short.
  write_safetensors(dir_ / "cut.safetensors", {{"w", tensor::zeros(dtype::f32, {64})}});
  fs::resize_file(dir_ / "cut.safetensors", fs::file_size(dir_ / "cut.safetensors") - 100);
  expect(dir_ / "cut.safetensors", "truncated");
  const auto good = safetensors_file::open(raw_file(
      "good.safetensors", R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 4));
  EXPECT_THROW(good.get("nope"), checkpoint_error);
}

/// A model directory with config.json and the given weights, single-file.
void write_model(const fs::path& dir, const std::vector<std::pair<std::string, tensor>>& tensors) {
  fs::create_directories(dir);
  fs::copy_file(troupe::testing::fixture_model("q-lora") / "config.json", dir / "config.json",
                fs::copy_options::overwrite_existing);
  write_safetensors(dir / "model.safetensors", tensors);
}

TEST_F(Safetensors, Fp8WeightsDequantiseWithTheirBlockScales) {
  const std::int64_t rows = 130, cols = 200;  // partial edge blocks in both directions
  tensor weight = tensor::empty(dtype::f32, {rows, cols});
  for (std::int64_t i = 0; i < weight.numel(); ++i)
    weight.data_as<float>()[i] =
        std::sin(0.37f * static_cast<float>(i)) * (1.0f + static_cast<float>(i % 7));
  tensor codes = tensor::empty(dtype::f8_e4m3, {rows, cols}),
         scales = tensor::empty(dtype::f32, {2, 2});
  kernels::cpu::fp8_quantize_blocks(weight.data_as<float>(), rows, cols,
                                    codes.data_as<std::uint8_t>(), scales.data_as<float>());
  tensor bf16 = tensor::empty(dtype::bf16, {4});
  for (int i = 0; i < 4; ++i)
    bf16.data_as<std::uint16_t>()[i] = float_to_bf16(0.5f * static_cast<float>(i) + 0.25f);
  write_model(dir_ / "model", {{"w.weight", codes},
                               {"w.weight_scale_inv", scales},
                               {"norm.weight", bf16},
                               {"orphan.weight", codes}});
  const auto checkpoint = hf_checkpoint::open(dir_ / "model");
  const tensor decoded = checkpoint.read_f32("w.weight");
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      const float expected = e4m3_to_float(codes.data_as<std::uint8_t>()[r * cols + c]) *
                             scales.data_as<float>()[(r / 128) * 2 + c / 128];
      ASSERT_EQ(decoded.data_as<float>()[r * cols + c], expected) << r << "," << c;
    }
  EXPECT_EQ(checkpoint.read_f32("norm.weight").data_as<float>()[3], 1.75f);
  try {
    checkpoint.read_f32("orphan.weight");
    FAIL();
  } catch (const checkpoint_error& e) {
    EXPECT_NE(std::string(e.what()).find("no 'orphan.weight_scale_inv'"), std::string::npos)
        << e.what();
  }
  write_model(dir_ / "bad-scales",
              {{"w.weight", codes}, {"w.weight_scale_inv", tensor::zeros(dtype::f32, {1, 2})}});
  try {
    hf_checkpoint::open(dir_ / "bad-scales").read_f32("w.weight");
    FAIL();
  } catch (const checkpoint_error& e) {
    EXPECT_NE(std::string(e.what()).find("needs [2, 2] (one per 128x128 block)"), std::string::npos)
        << e.what();
  }
}

TEST_F(Safetensors, ShardedDirectoriesAndTheirErrors) {
  // The committed no-q-lora fixture is sharded with an index.
  const auto sharded = hf_checkpoint::open(troupe::testing::fixture_model("no-q-lora"));
  EXPECT_TRUE(sharded.contains("model.embed_tokens.weight"));
  EXPECT_TRUE(sharded.contains("model.layers.3.eh_proj.weight"));
  // An index naming a tensor its shard lacks.
  const fs::path dir = dir_ / "index";
  write_model(dir, {{"a", tensor::zeros(dtype::f32, {2})}});
  fs::rename(dir / "model.safetensors", dir / "shard-1.safetensors");
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map": {"a": "shard-1.safetensors", "b": "shard-1.safetensors"}})";
  try {
    hf_checkpoint::open(dir);
    FAIL();
  } catch (const checkpoint_error& e) {
    EXPECT_NE(std::string(e.what()).find("puts 'b' in shard-1.safetensors, which does not have it"),
              std::string::npos)
        << e.what();
  }
  std::ofstream(dir / "model.safetensors.index.json") << "{ not json";
  EXPECT_THROW(hf_checkpoint::open(dir), checkpoint_error);
  EXPECT_THROW(hf_checkpoint::open(dir_ / "nowhere"), checkpoint_error);
}

TEST_F(Safetensors, ParametersLoadOnlyWhenTheCheckpointFits) {
  parameter_store store;
  store.add("a", {"", {2, 3}, dtype::f32, TROUPE_INIT_ZEROS, 0.0f, TROUPE_PARAM_TRAINABLE});
  store.add("b", {"", {4}, dtype::f32, TROUPE_INIT_ZEROS, 0.0f, TROUPE_PARAM_TRAINABLE});
  store.add("c", {"", {1}, dtype::f32, TROUPE_INIT_ZEROS, 0.0f, TROUPE_PARAM_TRAINABLE});
  write_model(dir_ / "model",
              {{"a", tensor::zeros(dtype::f32, {3, 2})}, {"b", tensor::zeros(dtype::bf16, {4})}});
  try {
    load_parameters(hf_checkpoint::open(dir_ / "model"), store);
    FAIL();
  } catch (const checkpoint_error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("missing 1 tensor: c"), std::string::npos) << message;
    EXPECT_NE(message.find("a is [3, 2] in the checkpoint, the model needs [2, 3]"),
              std::string::npos)
        << message;
  }
}

TEST_F(Safetensors, LoadingOnAPoolGivesTheSameParametersAndTheFirstBadTensor) {
  const auto checkpoint = hf_checkpoint::open(troupe::testing::fixture_model("fp8"));
  plugin_registry registry;
  const auto plugins = load_model_plugins(registry, checkpoint.config());
  model_runner serial(checkpoint.config(), {}, plugins), pooled(checkpoint.config(), {}, plugins);
  thread_pool pool(3);
  load_parameters(checkpoint, serial.parameters());
  load_parameters(checkpoint, pooled.parameters(), &pool);
  const auto a = serial.parameters().all(), b = pooled.parameters().all();
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(std::memcmp(a[i]->value.data(), b[i]->value.data(), a[i]->value.nbytes()), 0)
        << a[i]->name;
  // Two tensors holding a NaN: the one first in the store's order is named, on a pool too.
  parameter_store store;
  for (const char* name : {"a", "b", "c"})
    store.add(name, {"", {4}, dtype::f32, TROUPE_INIT_ZEROS, 0.0f, TROUPE_PARAM_TRAINABLE});
  tensor clean = tensor::zeros(dtype::f32, {4}), bad = tensor::zeros(dtype::f32, {4});
  bad.data_as<float>()[2] = std::numeric_limits<float>::quiet_NaN();
  write_model(dir_ / "nan", {{"a", clean}, {"b", bad}, {"c", bad}});
  try {
    load_parameters(hf_checkpoint::open(dir_ / "nan"), store, &pool);
    FAIL();
  } catch (const checkpoint_error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'b' holds a non-finite value (nan at 2)"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(Safetensors, AModelWrittenInTheHuggingFaceLayoutReadsBackToTheSameLogits) {
  const auto original = hf_checkpoint::open(troupe::testing::fixture_model("groups"));
  plugin_registry registry;
  const auto plugins = load_model_plugins(registry, original.config());
  model_runner first(original.config(), {}, plugins);
  load_parameters(original, first.parameters());
  write_hf_checkpoint(dir_ / "saved", original.config(), first.checkpoint_tensors());
  const auto saved = hf_checkpoint::open(dir_ / "saved");
  EXPECT_TRUE(saved.contains("model.layers.4.shared_head.head.weight"));  // DeepSeek's MTP copies
  EXPECT_TRUE(saved.contains("model.layers.4.embed_tokens.weight"));
  model_runner second(saved.config(), {}, plugins);
  load_parameters(saved, second.parameters());
  thread_pool pool(2);
  exec_context context(device::cpu(), pool);
  model_batch batch;
  batch.tokens = tensor::empty(dtype::i32, {1, 6});
  for (int i = 0; i < 6; ++i) batch.tokens.data_as<std::int32_t>()[i] = 7 * i + 3;
  const auto a = first.forward(context, 0, batch, true),
             b = second.forward(context, 0, batch, true);
  EXPECT_EQ(std::memcmp(a.logits.data(), b.logits.data(), a.logits.nbytes()), 0);
  EXPECT_EQ(std::memcmp(a.mtp_logits[0].data(), b.mtp_logits[0].data(), a.logits.nbytes()), 0);
}

}  // namespace
