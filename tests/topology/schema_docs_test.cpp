// docs/topology.md is the complete reference of the topology format: every section and key of
// the schema has its row there, and every row there is a real key.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "runtime/topology/schema.hpp"
#include "tests/support/markdown.hpp"

namespace {

/// Section name -> the keys documented in its "## [section]" or "## [[section]]" part.
std::map<std::string, std::set<std::string>> documented_keys() {
  const char* source_dir = std::getenv("TROUPE_SOURCE_DIR");
  std::ifstream in(std::filesystem::path(source_dir != nullptr ? source_dir : ".") /
                   "docs/topology.md");
  EXPECT_TRUE(in) << "docs/topology.md is missing";
  std::map<std::string, std::set<std::string>> keys;
  std::string line, section;
  while (std::getline(in, line)) {
    if (auto heading = troupe::testing::section_heading(line)) {
      section = *heading;
      keys[section];
    } else if (line.starts_with("## ")) {
      section.clear();
    } else if (auto key = troupe::testing::table_key(line); key && !section.empty()) {
      keys[section].insert(*key);
    }
  }
  return keys;
}

TEST(TopologyDocs, EveryKeyIsDocumentedAndEveryDocumentedKeyExists) {
  auto docs = documented_keys();
  for (const auto& section : troupe::topology_schema()) {
    const std::string name(section.name);
    ASSERT_TRUE(docs.count(name)) << "docs/topology.md has no section for [" << name << "]";
    for (const auto& key : section.keys)
      EXPECT_TRUE(docs[name].count(std::string(key.name)))
          << "[" << name << "] " << key.name << " is not documented";
    for (const auto& key : docs[name])
      EXPECT_NE(section.find(key), nullptr)
          << "docs/topology.md documents [" << name << "] " << key << ", which does not exist";
  }
  for (const auto& [name, keys] : docs)
    EXPECT_NE(troupe::find_section(name), nullptr)
        << "docs/topology.md documents a section [" << name << "] that does not exist";
}

}  // namespace
