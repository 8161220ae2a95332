#pragma once

// A training corpus of text documents, read into memory:
//  - "builtin": the shipped Jargon File lexicon (corpus/README.md), one document per entry;
//  - a directory: every regular file in it (sorted by name) is one document;
//  - a .jsonl file: one JSON object per line, its "text" field one document;
//  - any other file: documents separated by lines holding only a form feed (\f).

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace troupe {

class text_corpus {
 public:
  /// Loads `source` ("builtin" or a path). Throws troupe::error naming the file and, for JSON
  /// lines, the line that is not an object with a string "text".
  static text_corpus load(const std::string& source);
  /// A corpus of the given documents (tests, tools).
  static text_corpus from_documents(const std::vector<std::string>& documents,
                                    std::string name = "memory");

  std::size_t size() const { return offsets_.size() - 1; }
  std::string_view document(std::size_t index) const;
  std::size_t bytes() const { return text_.size(); }
  /// Where it came from: the file or directory, or "builtin (...)".
  const std::string& name() const { return name_; }

 private:
  void add(std::string_view document);

  std::string name_;
  std::string text_;
  std::vector<std::size_t> offsets_{0};
};

}  // namespace troupe
