// Dataset files to a TokenCorpus, and the held-out split.
//
//   ExampleEncoder encoder(tokenizer, &chat, eos_token_id_from_config(tokenizer_path, tokenizer));
//   LoadReport report;
//   TokenCorpus corpus = load_dataset("train.jsonl", encoder, {.skip_bad_lines = true}, &report);
//   DocumentSplit split = split_for_eval(corpus.num_documents(), 0.05, seed);
//
// A JSONL file holds one example per line (the forms of example_encoder.h); document i of the
// corpus is the i-th good line. A bad line (invalid JSON, a blank line, a wrong shape, a template
// error, a line longer than LoadOptions::max_line_bytes) is an Error(kFormat) naming FILE:LINE, or,
// with skip_bad_lines, is left out and counted.
// A .txt file holds one example per line, each encoded as the "text" form (as the datasets
// library's text loader and TRL read it); its blank lines hold no example.
// A .mfbin file (token_corpus.h) is memory-mapped as it is.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/example_encoder.h"
#include "data/token_corpus.h"

namespace moeforge::data {

// The longest JSONL line loaded by default. 64 MiB of text is millions of tokens, far past any
// max_seq_length, while parsing and tokenising a line takes memory many times its size; a longer
// line is a bad line rather than an allocation of many gigabytes.
constexpr uint64_t kMaxDatasetLineBytes = uint64_t{64} << 20;

struct LoadOptions {
  bool skip_bad_lines = false;
  int num_threads = 0;  // threads that encode lines; 0 = one per core. The result does not depend on it.
  uint64_t max_line_bytes = kMaxDatasetLineBytes;  // without the line break
};

struct LoadReport {
  int64_t lines = 0;      // lines read (JSONL only)
  int64_t documents = 0;  // documents in the corpus
  int64_t bad_lines = 0;  // lines skipped under skip_bad_lines
  std::vector<std::string> bad_line_errors;  // the first kMaxReportedBadLines of them, "FILE:LINE: why"
  static constexpr size_t kMaxReportedBadLines = 20;
};

// Encodes every line of a JSONL file.
TokenCorpus load_jsonl(const std::filesystem::path& path, const ExampleEncoder& encoder, const LoadOptions& options,
                       LoadReport* report = nullptr);

// Encodes every non-blank line of a plain text file as a "text" example.
TokenCorpus load_text_lines(const std::filesystem::path& path, const ExampleEncoder& encoder,
                            const LoadOptions& options, LoadReport* report = nullptr);

// By the extension: a .mfbin file is opened and checked against the encoder's tokenizer vocabulary,
// a .txt file read by load_text_lines; anything else is read as JSONL.
TokenCorpus load_dataset(const std::filesystem::path& path, const ExampleEncoder& encoder, const LoadOptions& options,
                         LoadReport* report = nullptr);

// Document indices of a corpus split into training and held-out evaluation parts, both ascending.
struct DocumentSplit {
  std::vector<uint64_t> train;
  std::vector<uint64_t> eval;
};

// The eval part is round(eval_ratio * n) documents (at least 1 when eval_ratio > 0, and leaving at
// least one for training) drawn uniformly by a permutation that depends only on `seed` and n, so a
// resumed run holds out the same documents. eval_ratio must lie in [0, 1).
DocumentSplit split_for_eval(uint64_t num_documents, double eval_ratio, uint64_t seed);

// All documents 0 .. n-1 (no held-out part).
std::vector<uint64_t> all_documents(uint64_t num_documents);

}  // namespace moeforge::data
