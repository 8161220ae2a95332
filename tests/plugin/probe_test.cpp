// Loading is checked in a probe process first (runtime/plugin/probe.hpp): a library that
// segfaults in its entry or init(), exits in a constructor or hangs in init() is a load error
// naming it and the cause, and the process that asked (this test, `troupe plugins list`,
// `troupe topo check`, `troupe train`) lives on. A library's name and kind must match its file and
// role, and whatever is named like a plugin on the search path must be a readable library.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <fmt/format.h>

#include "runtime/plugin/probe.hpp"
#include "runtime/plugin/registry.hpp"
#include "tests/support/command_runs.hpp"
#include "tests/support/fixtures.hpp"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using troupe::plugin_kind;
using troupe::plugin_load_error;
using troupe::plugin_load_failure;
using troupe::plugin_registry;
using troupe::plugin_search_path;
using troupe::testing::run_result;

fs::path dir_of(const char* variable) {
  const char* dir = std::getenv(variable);
  if (dir == nullptr) throw std::runtime_error(std::string(variable) + " is not set");
  return dir;
}

fs::path test_plugin(const std::string& name) {
  return dir_of("TROUPE_TEST_PLUGIN_DIR") / ("libtroupe-" + name + ".so");
}

fs::path unsafe_plugin(const std::string& name) {
  return dir_of("TROUPE_TEST_UNSAFE_PLUGIN_DIR") / ("libtroupe-broken-" + name + ".so");
}

fs::path impostor() {
  return dir_of("TROUPE_TEST_IMPOSTOR_PLUGIN_DIR") / "libtroupe-moe.so";
}

plugin_registry make_registry() {
  return plugin_registry(plugin_search_path({{dir_of("TROUPE_TEST_PLUGIN_DIR"), "test"}}));
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

/// After any failure, the registry and the process still work.
void expect_still_working(plugin_registry& registry) {
  EXPECT_EQ(registry.load("test-attention")->name, "test-attention");
}

/// Sets an environment variable for one scope.
class scoped_env {
 public:
  scoped_env(const char* name, const std::string& value) : name_(name) {
    ::setenv(name, value.c_str(), 1);
  }
  ~scoped_env() { ::unsetenv(name_); }

 private:
  const char* name_;
};

TEST(PluginProbe, ASegfaultInTheEntryIsALoadErrorAndThisProcessLivesOn) {
  auto registry = make_registry();
  const auto file = unsafe_plugin("entry-segv");
  auto message = expect_failure(registry, file.string(), plugin_load_failure::crashed);
  EXPECT_THAT(message, HasSubstr(file.string()));
  EXPECT_THAT(message, HasSubstr("crashed while loading"));
  EXPECT_THAT(message, HasSubstr("SEGV"));  // "killed by SIGSEGV" (a sanitizer's report: "SEGV")
  EXPECT_THAT(message, HasSubstr("troupe_plugin_entry()"));
  EXPECT_TRUE(registry.loaded().empty());
  expect_still_working(registry);
}

TEST(PluginProbe, ASegfaultInInitIsALoadErrorAndTheLibraryIsNotLoaded) {
  auto registry = make_registry();
  const auto file = unsafe_plugin("init-segv");
  auto message = expect_failure(registry, file.string(), plugin_load_failure::crashed);
  EXPECT_THAT(message, HasSubstr(file.string()));
  EXPECT_THAT(message, HasSubstr("SEGV"));
  EXPECT_THAT(message, HasSubstr("in init() of plugin 'broken-init-segv'"));
  EXPECT_THAT(message, HasSubstr("this process is unaffected"));
  EXPECT_TRUE(registry.loaded().empty());
  // A wrong role is reported before the crash: the table is read before init() runs.
  auto kind =
      expect_failure(registry, file.string(), plugin_load_failure::wrong_kind, {plugin_kind::moe});
  EXPECT_THAT(kind, HasSubstr("a plugin of kind moe is needed"));
  expect_still_working(registry);
}

TEST(PluginProbe, AConstructorThatExitsIsALoadErrorNotASilentExit) {
  auto registry = make_registry();
  const auto file = unsafe_plugin("ctor-exit");
  auto message = expect_failure(registry, file.string(), plugin_load_failure::crashed);
  EXPECT_THAT(message, HasSubstr(file.string()));
  EXPECT_THAT(message, HasSubstr("exited with status 0"));
  EXPECT_THAT(message, HasSubstr("static constructors"));
  expect_still_working(registry);
}

TEST(PluginProbe, AnInitThatHangsIsKilledAtTheDeadline) {
  scoped_env deadline("TROUPE_PLUGIN_PROBE_TIMEOUT", "1");
  auto registry = make_registry();
  const auto file = unsafe_plugin("init-hangs");
  const auto start = std::chrono::steady_clock::now();
  auto message = expect_failure(registry, file.string(), plugin_load_failure::timed_out);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took.count(), 0.9);
  EXPECT_LT(took.count(), 5.0);
  EXPECT_THAT(message, HasSubstr(file.string()));
  EXPECT_THAT(message, HasSubstr("in init() of plugin 'broken-init-hangs' after 1 s"));
  EXPECT_THAT(message, HasSubstr("TROUPE_PLUGIN_PROBE_TIMEOUT"));
  EXPECT_EQ(troupe::plugin_probe_deadline(), std::chrono::seconds(1));
  expect_still_working(registry);
}

TEST(PluginProbe, NameAndKindMustMatchTheFileAndTheRole) {
  auto registry = make_registry();
  // libtroupe-moe.so calling itself "mla": refused by path, whatever the role.
  for (auto role : {plugin_kind::attention, plugin_kind::moe}) {
    auto message =
        expect_failure(registry, impostor().string(), plugin_load_failure::bad_descriptor, {role});
    EXPECT_THAT(message, HasSubstr(impostor().string()));
    EXPECT_THAT(message, HasSubstr("calls itself 'mla', but its file name says 'moe'"));
  }
  expect_failure(registry, impostor().string(), plugin_load_failure::bad_descriptor);
  auto misnamed = expect_failure(registry, test_plugin("broken-misnamed").string(),
                                 plugin_load_failure::bad_descriptor);
  EXPECT_THAT(misnamed, HasSubstr("somebody-else"));
  // A library that suits its file but not the role.
  auto kind = expect_failure(registry, test_plugin("test-naive-gemm").string(),
                             plugin_load_failure::wrong_kind, {plugin_kind::attention});
  EXPECT_THAT(kind, HasSubstr("a gemm plugin, but a plugin of kind attention is needed"));
  EXPECT_TRUE(registry.loaded().empty());
  expect_still_working(registry);
}

TEST(PluginProbe, WhatIsNamedLikeAPluginOnTheSearchPathMustBeALibrary) {
  const fs::path dir = troupe::testing::scratch_dir("plugin", "not-files");
  fs::create_directory(dir / "libtroupe-test-attention.so");
  fs::create_symlink("libtroupe-test-naive-gemm.so", dir / "libtroupe-test-naive-gemm.so");
  fs::create_symlink(dir / "nowhere.so", dir / "libtroupe-broken-init-fails.so");
  plugin_registry registry(plugin_search_path(
      {{dir, "topology"}, {dir_of("TROUPE_TEST_PLUGIN_DIR"), "TROUPE_PLUGIN_PATH"}}));
  struct expectation {
    std::string name, cause;
  };
  for (const auto& [name, cause] : {expectation{"test-attention", "a directory, not a library"},
                                    expectation{"test-naive-gemm", "a symbolic link loop"},
                                    expectation{"broken-init-fails", "which does not exist"}}) {
    const fs::path path = dir / plugin_search_path::library_file_name(name);
    auto message = expect_failure(registry, name, plugin_load_failure::not_a_file);
    EXPECT_THAT(message, HasSubstr(path.string()));
    EXPECT_THAT(message, HasSubstr(cause));
    EXPECT_THAT(message, HasSubstr("on the search path, from topology"));
    EXPECT_THAT(expect_failure(registry, path.string(), plugin_load_failure::not_a_file),
                HasSubstr(cause));
  }
  if (::geteuid() != 0) {  // root reads any file
    const fs::path unreadable = dir / "libtroupe-test-unreadable.so";
    fs::copy_file(test_plugin("test-naive-gemm"), unreadable);
    fs::permissions(unreadable, fs::perms::none);
    EXPECT_THAT(expect_failure(registry, unreadable.string(), plugin_load_failure::not_a_file),
                HasSubstr("not readable"));
  }
  EXPECT_TRUE(registry.loaded().empty());
}

TEST(PluginProbe, ResultsAreCachedPerFileContents) {
  const fs::path dir = troupe::testing::scratch_dir("plugin", "cache");
  const fs::path file = dir / "libtroupe-test-naive-gemm.so";
  fs::copy_file(test_plugin("test-naive-gemm"), file);
  auto registry = make_registry();
  const auto before = troupe::plugin_probes_started();
  // A job swapping the same library in again and again pays for one probe.
  for (int i = 0; i < 3; ++i) registry.load(file.string(), {plugin_kind::gemm, true});
  EXPECT_EQ(troupe::plugin_probes_started(), before + 1);
  // A rebuilt library (new mtime) is probed again.
  fs::last_write_time(file, fs::last_write_time(file) + std::chrono::seconds(5));
  registry.load(file.string(), {plugin_kind::gemm, true});
  EXPECT_EQ(troupe::plugin_probes_started(), before + 2);
  EXPECT_EQ(registry.loaded().size(), 4u);

  // What one probe costs, uncached: a process start, dlopen, the entry and init().
  double fastest = 1e9;
  for (int i = 0; i < 5; ++i) {
    auto report = troupe::probe_plugin(file, file, std::nullopt);
    ASSERT_FALSE(report.failure) << report.cause;
    EXPECT_TRUE(report.table);
    EXPECT_EQ(report.name, "test-naive-gemm");
    fastest = std::min(fastest, report.milliseconds);
  }
  std::printf("one probe of %s: %.2f ms (fastest of 5)\n", file.filename().c_str(), fastest);
}

TEST(PluginProbe, AMissingProbeIsAnErrorAndOffLoadsUnprobed) {
  // Copies no probe has seen (a cached result would answer without one).
  const fs::path dir = troupe::testing::scratch_dir("plugin", "no-probe");
  for (const char* name : {"broken-abi-major", "broken-abi-minor"})
    fs::copy_file(test_plugin(name), dir / fmt::format("libtroupe-{}.so", name));
  auto registry = make_registry();
  {
    scoped_env probe("TROUPE_PLUGIN_PROBE", "/nonexistent/troupe-plugin-probe");
    auto message = expect_failure(registry, (dir / "libtroupe-broken-abi-major.so").string(),
                                  plugin_load_failure::unchecked);
    EXPECT_THAT(message, HasSubstr("/nonexistent/troupe-plugin-probe"));
  }
  {
    scoped_env probe("TROUPE_PLUGIN_PROBE", "off");
    const auto before = troupe::plugin_probes_started();
    EXPECT_EQ(troupe::plugin_probe_executable(test_plugin("test-attention")), std::nullopt);
    // The checks in this process still apply.
    expect_failure(registry, (dir / "libtroupe-broken-abi-minor.so").string(),
                   plugin_load_failure::abi_mismatch);
    EXPECT_EQ(troupe::plugin_probes_started(), before);
  }
  auto probe = troupe::plugin_probe_executable(test_plugin("test-attention"));
  ASSERT_TRUE(probe.has_value());
  EXPECT_EQ(probe->filename(), "troupe-plugin-probe");
}

// ---- the troupe command ------------------------------------------------------------------------

run_result troupe_run(const std::string& arguments, const std::string& environment = "") {
  return troupe::testing::run_command(environment + " " + dir_of("TROUPE_EXE").string() + " " +
                                      arguments);
}

/// A topology like tiny.toml whose [plugins] table is `plugins`, written into `dir`.
fs::path write_topology(const fs::path& dir, const std::string& plugins,
                        const std::string& precision = "fp32") {
  const fs::path file = dir / "topology.toml";
  std::ofstream(file) << fmt::format(
      R"([job]
name = "probe"

[model]
config = "{}"
precision = "{}"

[[stages]]
layers = "0-3"
device = "cpu"

[train]
steps = 1
micro_batch_size = 2
sequence_length = 16

[plugins]
{}
)",
      (troupe::testing::source_dir() / "topologies/models/tiny/config.json").string(), precision,
      plugins);
  return file;
}

void expect_in(const run_result& result, const std::string& part) {
  EXPECT_THAT(result.output, HasSubstr(part)) << result.output;
}

TEST(PluginProbeCommands, PluginsListReportsEveryUnsafeLibraryAndCarriesOn) {
  const run_result list =
      troupe_run("plugins list --dir " + dir_of("TROUPE_TEST_UNSAFE_PLUGIN_DIR").string() +
                     " --dir " + dir_of("TROUPE_TEST_IMPOSTOR_PLUGIN_DIR").string(),
                 "TROUPE_PLUGIN_PROBE_TIMEOUT=1");
  EXPECT_EQ(list.exit_code, 0) << list.output;
  expect_in(list, unsafe_plugin("entry-segv").string());
  expect_in(list, "killed by SIGSEGV (Segmentation fault) in troupe_plugin_entry()");
  expect_in(list, "killed by SIGSEGV (Segmentation fault) in init() of plugin 'broken-init-segv'");
  expect_in(list, "exited with status 0 while loading the library");
  expect_in(list, "timed out while loading");
  expect_in(list, "calls itself 'mla', but its file name says 'moe'");
  // It got to the end: the summary follows every library (an exit(0) used to end it silently).
  expect_in(list, "5 of 8 libraries could not be loaded");
  expect_in(list, "mla ");  // the shipped plugins still list after the broken ones

  const fs::path dir = troupe::testing::scratch_dir("plugin", "list-not-files");
  fs::create_directory(dir / "libtroupe-folder.so");
  fs::create_symlink("libtroupe-loop.so", dir / "libtroupe-loop.so");
  const run_result odd = troupe_run("plugins list --dir " + dir.string());
  EXPECT_EQ(odd.exit_code, 0) << odd.output;
  expect_in(odd, (dir / "libtroupe-folder.so").string() + ": not a plugin file: a directory");
  expect_in(odd,
            (dir / "libtroupe-loop.so").string() + ": not a plugin file: a symbolic link loop");
}

TEST(PluginProbeCommands, TopoCheckAndTrainReportUnsafePluginsAndExitOne) {
  const fs::path dir = troupe::testing::scratch_dir("plugin", "topo");
  const fs::path segv =
      write_topology(dir, fmt::format("gemm = \"{}\"", unsafe_plugin("init-segv").string()), "fp8");
  for (const char* command : {"topo check", "train --steps 1 --quiet"}) {
    const run_result r = troupe_run(std::string(command) + " " + segv.string());
    EXPECT_EQ(r.exit_code, 1) << command << "\n" << r.output;
    expect_in(r, unsafe_plugin("init-segv").string());
    expect_in(r, "killed by SIGSEGV");
  }
  const fs::path exits =
      write_topology(dir, fmt::format("attention = \"{}\"", unsafe_plugin("ctor-exit").string()));
  const run_result exit_check = troupe_run("topo check " + exits.string());
  EXPECT_EQ(exit_check.exit_code, 1) << exit_check.output;
  expect_in(exit_check, "exited with status 0");

  const fs::path named =
      write_topology(dir, fmt::format("attention = \"{}\"", impostor().string()));
  const run_result impostor_check = troupe_run("topo check " + named.string());
  EXPECT_EQ(impostor_check.exit_code, 1) << impostor_check.output;
  expect_in(impostor_check, "calls itself 'mla', but its file name says 'moe'");
}

TEST(PluginProbeCommands, ADirectoryOrLoopOnTheTopologysSearchPathIsAnError) {
  const fs::path dir = troupe::testing::scratch_dir("plugin", "topo-search-path");
  fs::create_directories(dir / "plugins" / "libtroupe-moe.so");
  fs::create_symlink("libtroupe-mla.so", dir / "plugins" / "libtroupe-mla.so");
  const fs::path topology = write_topology(dir, "search_path = [\"plugins\"]");
  for (const char* command : {"topo check", "train --steps 1 --quiet"}) {
    const run_result r = troupe_run(std::string(command) + " " + topology.string());
    EXPECT_EQ(r.exit_code, 1) << command << "\n" << r.output;
    // The first role checked names the first bad entry; neither falls back to the installed one.
    EXPECT_TRUE(r.output.find((dir / "plugins/libtroupe-mla.so").string() +
                              ": not a plugin file: a symbolic link loop") != std::string::npos ||
                r.output.find((dir / "plugins/libtroupe-moe.so").string() +
                              ": not a plugin file: a directory") != std::string::npos)
        << r.output;
    expect_in(r, "search path, from topology");
    expect_in(r, topology.string() + ":");  // with the place in the topology
  }
}

}  // namespace
