#include "data/dataset.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <optional>
#include <thread>
#include <utility>

#include "core/error.h"
#include "data/shuffle.h"

namespace moeforge::data {

namespace {

// The outcome of one line: its encoding, or the error that made it bad.
struct LineResult {
  std::optional<EncodedExample> example;
  ErrorCode code = ErrorCode::kFormat;
  std::string error;
};

LineResult encode_line(const ExampleEncoder& encoder, const std::string& where, const std::string& line) {
  LineResult result;
  try {
    if (line.find_first_not_of(" \t") == std::string::npos) fail(ErrorCode::kFormat, where, ": blank line");
    nlohmann::ordered_json example;
    try {
      example = nlohmann::ordered_json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail(ErrorCode::kFormat, where, ": invalid JSON: ", e.what());
    }
    result.example = encoder.encode(example, where);
  } catch (const Error& e) {
    result.code = e.code();
    result.error = e.what();
  }
  return result;
}

std::vector<std::string> read_lines(const std::filesystem::path& path) {
  MF_CHECK(std::filesystem::exists(path), kNotFound, "dataset file ", path.string(), " does not exist");
  std::ifstream in(path, std::ios::binary);
  MF_CHECK(in.good(), kIo, "cannot open dataset file ", path.string());
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  MF_CHECK(!in.bad(), kIo, "cannot read dataset file ", path.string());
  return lines;
}

}  // namespace

TokenCorpus load_jsonl(const std::filesystem::path& path, const ExampleEncoder& encoder, const LoadOptions& options,
                       LoadReport* report) {
  const std::vector<std::string> lines = read_lines(path);
  const std::string name = path.string();

  // Lines are encoded in parallel over contiguous ranges, then gathered in file order, so the
  // corpus and the first error reported are the same for any thread count.
  std::vector<LineResult> results(lines.size());
  size_t threads = options.num_threads > 0 ? static_cast<size_t>(options.num_threads)
                                           : std::max(1u, std::thread::hardware_concurrency());
  threads = std::max<size_t>(1, std::min(threads, lines.size() / 64 + 1));
  auto encode_range = [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) results[i] = encode_line(encoder, str_cat(name, ":", i + 1), lines[i]);
  };
  if (threads == 1) {
    encode_range(0, lines.size());
  } else {
    std::vector<std::thread> workers;
    const size_t per_thread = (lines.size() + threads - 1) / threads;
    for (size_t t = 0; t < threads; ++t)
      workers.emplace_back(encode_range, std::min(lines.size(), t * per_thread),
                           std::min(lines.size(), (t + 1) * per_thread));
    for (auto& w : workers) w.join();
  }

  LoadReport local;
  local.lines = static_cast<int64_t>(lines.size());
  CorpusBuilder builder;
  for (LineResult& r : results) {
    if (!r.example) {
      if (!options.skip_bad_lines) throw Error(r.code, r.error);
      ++local.bad_lines;
      if (local.bad_line_errors.size() < LoadReport::kMaxReportedBadLines) local.bad_line_errors.push_back(r.error);
      continue;
    }
    builder.add_document(r.example->ids, r.example->loss_mask);
    r.example.reset();
  }
  local.documents = static_cast<int64_t>(builder.num_documents());
  if (report != nullptr) *report = std::move(local);
  return builder.finish(name, encoder.tokenizer().vocab_size(), nlohmann::json{{"source", name}});
}

TokenCorpus load_dataset(const std::filesystem::path& path, const ExampleEncoder& encoder, const LoadOptions& options,
                         LoadReport* report) {
  if (path.extension() == ".mfbin") {
    TokenCorpus corpus = TokenCorpus::open_mfbin(path);
    corpus.check_vocabulary(encoder.tokenizer().vocab_size());
    if (report != nullptr) {
      *report = LoadReport{};
      report->documents = static_cast<int64_t>(corpus.num_documents());
    }
    return corpus;
  }
  return load_jsonl(path, encoder, options, report);
}

std::vector<uint64_t> all_documents(uint64_t num_documents) {
  std::vector<uint64_t> docs(num_documents);
  for (uint64_t i = 0; i < num_documents; ++i) docs[i] = i;
  return docs;
}

DocumentSplit split_for_eval(uint64_t num_documents, double eval_ratio, uint64_t seed) {
  MF_CHECK(eval_ratio >= 0 && eval_ratio < 1, kInvalidArgument, "eval_ratio must lie in [0, 1), got ", eval_ratio);
  DocumentSplit split;
  if (eval_ratio == 0) {
    split.train = all_documents(num_documents);
    return split;
  }
  MF_CHECK(num_documents >= 2, kInvalidArgument, "eval_ratio ", eval_ratio, " needs at least 2 documents, the dataset has ",
           num_documents);
  auto n_eval = static_cast<uint64_t>(std::llround(eval_ratio * static_cast<double>(num_documents)));
  n_eval = std::clamp<uint64_t>(n_eval, 1, num_documents - 1);
  std::vector<uint64_t> order = shuffled(all_documents(num_documents), seed, kEvalSplitStream);
  split.eval.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n_eval));
  split.train.assign(order.begin() + static_cast<std::ptrdiff_t>(n_eval), order.end());
  std::sort(split.eval.begin(), split.eval.end());
  std::sort(split.train.begin(), split.train.end());
  return split;
}

}  // namespace moeforge::data
