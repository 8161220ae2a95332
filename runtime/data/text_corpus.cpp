#include "runtime/data/text_corpus.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/core/install_layout.hpp"

namespace troupe {

namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("{}: cannot read the corpus file", file.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

void text_corpus::add(std::string_view document) {
  if (document.empty()) return;
  text_.append(document);
  offsets_.push_back(text_.size());
}

std::string_view text_corpus::document(std::size_t index) const {
  return std::string_view(text_).substr(offsets_[index], offsets_[index + 1] - offsets_[index]);
}

text_corpus text_corpus::from_documents(const std::vector<std::string>& documents,
                                        std::string name) {
  text_corpus corpus;
  corpus.name_ = std::move(name);
  for (const auto& d : documents) corpus.add(d);
  return corpus;
}

text_corpus text_corpus::load(const std::string& source) {
  text_corpus corpus;
  fs::path path = source;
  if (source == "builtin") {
    path = current_install_layout().corpus_dir / "jargon-4.4.7.txt";
    corpus.name_ = "builtin (" + path.string() + ")";
  } else {
    corpus.name_ = source;
  }
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(path, ec))
      if (entry.is_regular_file()) files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    for (const auto& file : files) corpus.add(read_file(file));
  } else if (path.extension() == ".jsonl") {
    std::ifstream in(path);
    if (!in) fail("{}: cannot read the corpus file", path.string());
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json object;
      try {
        object = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        fail("{}:{}: not JSON: {}", path.string(), number, e.what());
      }
      if (!object.is_object() || !object.contains("text") || !object["text"].is_string())
        fail("{}:{}: each line must be a JSON object with a string \"text\"", path.string(),
             number);
      corpus.add(object["text"].get<std::string>());
    }
  } else {
    // Documents end at lines that hold only a form feed.
    const std::string text = read_file(path);
    std::size_t document_start = 0, line_start = 0;
    while (line_start < text.size()) {
      std::size_t line_end = text.find('\n', line_start);
      if (line_end == std::string::npos) line_end = text.size();
      std::string_view line = std::string_view(text).substr(line_start, line_end - line_start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line == "\f") {
        corpus.add(std::string_view(text).substr(document_start, line_start - document_start));
        document_start = line_end + 1;
      }
      line_start = line_end + 1;
    }
    if (document_start < text.size()) corpus.add(std::string_view(text).substr(document_start));
  }
  if (corpus.size() == 0) fail("{}: the corpus has no documents", path.string());
  return corpus;
}

}  // namespace troupe
