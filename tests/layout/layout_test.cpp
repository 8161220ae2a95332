// The house rules docs/architecture.md states, checked against the source tree: every folder of
// runtime/ is listed there with one line, in an order where each uses only the folders above it;
// kernels use nothing of the runtime but the C ABI and the scalar codecs; plugins nothing but
// those, kernels and plugins/common; CAF appears in runtime/actor and runtime/cluster only; no
// file of runtime/ is over 600 lines.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/fixtures.hpp"

namespace {

namespace fs = std::filesystem;
using troupe::testing::source_dir;

std::string read_file(const fs::path& file) {
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

/// Source files under `folder`, relative to the source root.
std::vector<fs::path> sources(const std::string& folder) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(source_dir() / folder)) {
    const auto extension = entry.path().extension();
    if (extension == ".cpp" || extension == ".hpp" || extension == ".h" || extension == ".cu" ||
        extension == ".cuh" || extension == ".c")
      files.push_back(fs::relative(entry.path(), source_dir()));
  }
  return files;
}

/// The rooms of runtime/ in the order docs/architecture.md lists them ("core/  errors, ...").
std::vector<std::string> documented_rooms() {
  const std::string doc = read_file(source_dir() / "docs/architecture.md");
  const auto start = doc.find("## The pieces");
  const auto block = doc.find("```", start);
  const auto end = doc.find("```", block + 3);
  std::istringstream lines(doc.substr(block + 3, end - block - 3));
  std::vector<std::string> rooms;
  const std::regex room(R"(^([a-z_]+)/\s+\S)");
  for (std::string line; std::getline(lines, line);) {
    std::smatch m;
    if (std::regex_search(line, m, room)) rooms.push_back(m[1]);
  }
  return rooms;
}

/// Every `#include "runtime/ROOM/..."` of `file`, as ROOM.
std::set<std::string> runtime_includes(const fs::path& file) {
  std::set<std::string> rooms;
  const std::string text = read_file(source_dir() / file);
  const std::regex include(R"re(#include "runtime/([a-z_]+)/)re");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), include);
       it != std::sregex_iterator(); ++it)
    rooms.insert((*it)[1]);
  return rooms;
}

TEST(Layout, EveryRuntimeFolderIsDocumentedAndLayersPointOneWay) {
  const auto rooms = documented_rooms();
  std::map<std::string, std::size_t> position;
  for (std::size_t i = 0; i < rooms.size(); ++i) position[rooms[i]] = i;
  std::set<std::string> folders;
  for (const auto& entry : fs::directory_iterator(source_dir() / "runtime"))
    if (entry.is_directory()) folders.insert(entry.path().filename().string());
  EXPECT_EQ(std::set<std::string>(rooms.begin(), rooms.end()), folders)
      << "docs/architecture.md lists every folder of runtime/ once";
  for (const auto& file : sources("runtime")) {
    const std::string room =
        file.begin()->string() == "runtime" ? std::next(file.begin())->string() : std::string();
    if (!position.count(room)) continue;
    for (const auto& used : runtime_includes(file)) {
      if (used == room || !position.count(used)) continue;
      EXPECT_LT(position[used], position[room])
          << file.string() << " (" << room << "/) uses " << used
          << "/, which docs/architecture.md lists below it";
    }
  }
}

TEST(Layout, KernelsAndPluginsUseOnlyTheAbiTheCodecsAndEachOther) {
  const std::regex allowed_by_kernels(
      R"re(#include "runtime/(abi/|tensor/(bf16|e4m3|f16)\.hpp))re");
  const std::regex any_runtime(R"re(#include "runtime/[^"]+")re");
  for (const std::string folder : {"kernels", "plugins"})
    for (const auto& file : sources(folder)) {
      const std::string text = read_file(source_dir() / file);
      for (auto it = std::sregex_iterator(text.begin(), text.end(), any_runtime);
           it != std::sregex_iterator(); ++it) {
        const std::string include = it->str();
        EXPECT_TRUE(std::regex_search(include, allowed_by_kernels))
            << file.string() << ": " << include << " (only the C ABI and the scalar codecs)";
      }
    }
}

TEST(Layout, CafStaysInTheActorLayerAndRuntimeFilesStaySmall) {
  for (const std::string folder : {"runtime", "tools", "plugins", "kernels"})
    for (const auto& file : sources(folder)) {
      const std::string path = file.string();
      const std::string text = read_file(source_dir() / file);
      const bool actor_layer =
          path.starts_with("runtime/actor/") || path.starts_with("runtime/cluster/");
      if (!actor_layer) {
        EXPECT_EQ(text.find("caf::"), std::string::npos) << path << " uses CAF directly";
        EXPECT_EQ(text.find("#include <caf/"), std::string::npos) << path << " includes CAF";
      }
      if (folder == "runtime") {
        const auto lines = std::count(text.begin(), text.end(), '\n');
        EXPECT_LE(lines, 600) << path << " has " << lines << " lines";
      }
    }
}

}  // namespace
