// The loader's contract: every bad library gives a specific error naming the file and the cause,
// and the process keeps running (each test goes on to load a good plugin afterwards).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "runtime/plugin/registry.hpp"

namespace {

namespace fs = std::filesystem;
using troupe::plugin_kind;
using troupe::plugin_load_error;
using troupe::plugin_load_failure;
using troupe::plugin_registry;
using troupe::plugin_search_path;

fs::path test_plugin_dir() {
  const char* dir = std::getenv("TROUPE_TEST_PLUGIN_DIR");
  return dir != nullptr ? fs::path(dir) : fs::path("tests/plugins");
}

plugin_registry make_registry() {
  return plugin_registry(plugin_search_path({{test_plugin_dir(), "test"}}));
}

/// Loads `reference` expecting failure `expected`; returns the message.
std::string expect_failure(plugin_registry& registry, const std::string& reference,
                           plugin_load_failure expected, troupe::plugin_load_options options = {}) {
  try {
    registry.load(reference, options);
  } catch (const plugin_load_error& e) {
    EXPECT_EQ(e.failure(), expected) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "loading " << reference << " should have failed";
  return "";
}

void expect_contains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

/// After any failure, the registry and the process still work.
void expect_still_working(plugin_registry& registry) {
  auto good = registry.load("test-attention");
  EXPECT_EQ(good->name, "test-attention");
}

TEST(PluginLoader, LoadsAValidPluginAndRecordsIt) {
  auto registry = make_registry();
  auto library = registry.load("test-attention", {plugin_kind::attention});
  EXPECT_EQ(library->name, "test-attention");
  EXPECT_EQ(library->version, "1.0.0");
  EXPECT_EQ(library->kind, plugin_kind::attention);
  EXPECT_EQ(library->abi_major, TROUPE_PLUGIN_ABI_MAJOR);
  EXPECT_EQ(library->generation, 1);
  EXPECT_EQ(library->file.filename(), "libtroupe-test-attention.so");
  // Loading again returns the same record; a fresh copy is a new generation from another file.
  EXPECT_EQ(registry.load("test-attention").get(), library.get());
  auto fresh = registry.load("test-attention", {plugin_kind::attention, true});
  EXPECT_EQ(fresh->generation, 2);
  EXPECT_NE(fresh->loaded_from, library->loaded_from);
  EXPECT_NE(fresh->api, library->api);  // a second copy of the code, not the same mapping
  EXPECT_EQ(registry.loaded().size(), 2u);
}

TEST(PluginLoader, LoadsByPathAndThroughTroupePluginPath) {
  auto registry = plugin_registry(plugin_search_path{});
  auto by_path = registry.load((test_plugin_dir() / "libtroupe-test-naive-gemm.so").string());
  EXPECT_EQ(by_path->kind, plugin_kind::gemm);
  setenv("TROUPE_PLUGIN_PATH", ("/nonexistent:" + test_plugin_dir().string()).c_str(), 1);
  auto standard = plugin_search_path::standard();
  unsetenv("TROUPE_PLUGIN_PATH");
  ASSERT_GE(standard.entries().size(), 2u);
  EXPECT_EQ(standard.entries()[1].origin, "TROUPE_PLUGIN_PATH");
  EXPECT_EQ(standard.find("test-attention"), test_plugin_dir() / "libtroupe-test-attention.so");
}

TEST(PluginLoader, SearchPathPutsTheTopologyFirstRelativeToItsFile) {
  std::vector<std::string> topology_dirs{"../plugins", "/abs/dir"};
  auto path = plugin_search_path::standard("/srv/topologies", topology_dirs);
  ASSERT_GE(path.entries().size(), 2u);
  EXPECT_EQ(path.entries()[0].dir, fs::path("/srv/plugins"));
  EXPECT_EQ(path.entries()[0].origin, "topology");
  EXPECT_EQ(path.entries()[1].dir, fs::path("/abs/dir"));
}

TEST(PluginLoader, ListsAvailablePlugins) {
  auto registry = make_registry();
  std::vector<std::string> names;
  for (const auto& [name, file] : registry.search_path().available()) names.push_back(name);
  EXPECT_NE(std::find(names.begin(), names.end(), "test-attention"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "broken-not-elf"), names.end());
}

TEST(PluginLoader, UnknownNameListsTheSearchPathAndWhatIsAvailable) {
  auto registry = make_registry();
  auto message = expect_failure(registry, "test-atention", plugin_load_failure::not_found);
  expect_contains(message, "libtroupe-test-atention.so");
  expect_contains(message, test_plugin_dir().string());
  expect_contains(message, "test-attention");
  expect_failure(registry, "/no/such/libtroupe-x.so", plugin_load_failure::not_found);
  expect_still_working(registry);
}

TEST(PluginLoader, AFileThatIsNotALibraryIsRejected) {
  auto registry = make_registry();
  auto message = expect_failure(registry, "broken-not-elf", plugin_load_failure::not_loadable);
  expect_contains(message, "libtroupe-broken-not-elf.so");
  expect_contains(message, "not a loadable library");
  expect_still_working(registry);
}

TEST(PluginLoader, AMissingEntrySymbolIsRejected) {
  auto registry = make_registry();
  auto message = expect_failure(registry, "broken-no-entry", plugin_load_failure::missing_entry);
  expect_contains(message, "libtroupe-broken-no-entry.so");
  expect_contains(message, "troupe_plugin_entry");
  expect_still_working(registry);
}

TEST(PluginLoader, AbiMismatchesAreRejectedWithBothVersions) {
  auto registry = make_registry();
  auto major = expect_failure(registry, "broken-abi-major", plugin_load_failure::abi_mismatch);
  expect_contains(major, "99.");
  expect_contains(major, troupe::host_abi_version());
  auto minor = expect_failure(registry, "broken-abi-minor", plugin_load_failure::abi_mismatch);
  expect_contains(minor, "newer");
  expect_still_working(registry);
}

TEST(PluginLoader, AnInitFailureCarriesThePluginsMessage) {
  auto registry = make_registry();
  auto message = expect_failure(registry, "broken-init-fails", plugin_load_failure::init_failed);
  expect_contains(message, "libtroupe-broken-init-fails.so");
  expect_contains(message, "simulated failure: required resource missing");
  EXPECT_TRUE(registry.loaded().empty());
  expect_still_working(registry);
}

TEST(PluginLoader, WrongKindIncompleteTablesNullTablesAndMisnamedLibraries) {
  auto registry = make_registry();
  auto kind = expect_failure(registry, "test-attention", plugin_load_failure::wrong_kind,
                             {plugin_kind::moe});
  expect_contains(kind, "attention plugin");
  expect_contains(kind, "a plugin of kind moe is needed");
  auto incomplete =
      expect_failure(registry, "broken-incomplete", plugin_load_failure::bad_descriptor);
  expect_contains(incomplete, "forward");
  expect_failure(registry, "broken-null-table", plugin_load_failure::bad_descriptor);
  auto misnamed = expect_failure(registry, "broken-misnamed", plugin_load_failure::bad_descriptor);
  expect_contains(misnamed, "somebody-else");
  expect_still_working(registry);
}

}  // namespace
