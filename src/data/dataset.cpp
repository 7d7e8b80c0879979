#include "data/dataset.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <new>
#include <optional>
#include <thread>
#include <utility>

#include "core/error.h"
#include "data/shuffle.h"
#include "io/json.h"

namespace moeforge::data {

namespace {

// The outcome of one line: its encoding, the error that made it bad, or neither (a blank line of
// a plain text file, which holds no example).
struct LineResult {
  std::optional<EncodedExample> example;
  ErrorCode code = ErrorCode::kFormat;
  std::string error;
};

enum class LineFormat { kJson, kPlainText };

// One line of a JSONL file. A line longer than the limit is not kept, only its length.
struct Line {
  std::string text;
  uint64_t bytes = 0;
};

OrderedJson parse_jsonl_line(const std::string& text, const std::string& where) {
  try {
    return parse_json_text<OrderedJson>(text, where);
  } catch (const Error& e) {
    throw Error(e.code(), str_cat(e.what(), " (a JSONL dataset holds one JSON object per line; a plain text file, "
                                  "one example per line, must end in .txt)"));
  }
}

LineResult encode_line(const ExampleEncoder& encoder, const std::string& where, const Line& line,
                       uint64_t max_line_bytes, LineFormat format) {
  LineResult result;
  try {
    MF_CHECK(line.bytes <= max_line_bytes, kFormat, where, ": line of ", line.bytes,
             " bytes is longer than the limit of ", max_line_bytes, " bytes");
    const bool blank = line.text.find_first_not_of(" \t") == std::string::npos;
    if (format == LineFormat::kPlainText) {
      if (!blank) result.example = encoder.encode_text(line.text, where);
      return result;
    }
    if (blank) fail(ErrorCode::kFormat, where, ": blank line");
    result.example = encoder.encode(parse_jsonl_line(line.text, where), where);
  } catch (const Error& e) {
    result.code = e.code();
    result.error = e.what();
  } catch (const std::bad_alloc&) {
    // Lines are encoded on worker threads, where an escaping exception would end the process.
    result.code = ErrorCode::kOutOfMemory;
    result.error = str_cat(where, ": out of host memory encoding this line of ", line.bytes, " bytes");
  }
  return result;
}

// The lines as std::getline splits them, a trailing '\r' dropped, without holding more than
// max_line_bytes + 1 bytes of any one line (the '\r' may be the byte past the limit).
std::vector<Line> read_lines(const std::filesystem::path& path, uint64_t max_line_bytes) {
  MF_CHECK(std::filesystem::exists(path), kNotFound, "dataset file ", path.string(), " does not exist");
  std::ifstream in(path, std::ios::binary);
  MF_CHECK(in.good(), kIo, "cannot open dataset file ", path.string());
  const uint64_t keep_bytes = std::max(max_line_bytes, max_line_bytes + 1);  // no wrap at UINT64_MAX
  std::vector<Line> lines;
  Line line;
  bool line_open = false;  // bytes of a line not yet ended by '\n' have been read
  char last_byte = 0;
  auto end_line = [&] {
    if (last_byte == '\r') {
      if (line.text.size() == line.bytes) line.text.pop_back();
      --line.bytes;
    }
    if (line.bytes > max_line_bytes) line.text = std::string();  // a bad line: only its length is reported
    lines.push_back(std::move(line));
    line = Line{};
    line_open = false;
    last_byte = 0;
  };
  std::vector<char> buffer(size_t{1} << 20);
  while (in.read(buffer.data(), static_cast<std::streamsize>(buffer.size())) || in.gcount() > 0) {
    std::string_view chunk(buffer.data(), static_cast<size_t>(in.gcount()));
    while (!chunk.empty()) {
      const size_t newline = chunk.find('\n');
      const std::string_view piece = chunk.substr(0, newline);
      line.text.append(piece.substr(0, std::min<uint64_t>(keep_bytes - line.text.size(), piece.size())));
      line.bytes += piece.size();
      if (!piece.empty()) last_byte = piece.back();
      line_open = true;
      if (newline == std::string_view::npos) break;
      end_line();
      chunk.remove_prefix(newline + 1);
    }
  }
  MF_CHECK(!in.bad(), kIo, "cannot read dataset file ", path.string());
  if (line_open) end_line();
  return lines;
}

}  // namespace

namespace {

TokenCorpus load_lines(const std::filesystem::path& path, LineFormat format, const ExampleEncoder& encoder,
                       const LoadOptions& options, LoadReport* report) {
  const std::vector<Line> lines = read_lines(path, options.max_line_bytes);
  const std::string name = path.string();

  // Lines are encoded in parallel over contiguous ranges, then gathered in file order, so the
  // corpus and the first error reported are the same for any thread count.
  std::vector<LineResult> results(lines.size());
  size_t threads = options.num_threads > 0 ? static_cast<size_t>(options.num_threads)
                                           : std::max(1u, std::thread::hardware_concurrency());
  threads = std::max<size_t>(1, std::min(threads, lines.size() / 64 + 1));
  auto encode_range = [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i)
      results[i] = encode_line(encoder, str_cat(name, ":", i + 1), lines[i], options.max_line_bytes, format);
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
    if (!r.example && r.error.empty()) continue;  // a blank line of a text file
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

}  // namespace

TokenCorpus load_jsonl(const std::filesystem::path& path, const ExampleEncoder& encoder, const LoadOptions& options,
                       LoadReport* report) {
  return load_lines(path, LineFormat::kJson, encoder, options, report);
}

TokenCorpus load_text_lines(const std::filesystem::path& path, const ExampleEncoder& encoder, const LoadOptions& options,
                            LoadReport* report) {
  return load_lines(path, LineFormat::kPlainText, encoder, options, report);
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
  if (path.extension() == ".txt") return load_text_lines(path, encoder, options, report);
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
