// moeforge tokenize: a JSONL file of {"text": ...} lines to {"ids": [...]} lines with a Hugging Face
// tokenizer.json, the ids being exactly those of the Python `tokenizers` library; --decode goes back.
// Any bad line stops the command before anything is written, naming FILE:LINE.
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "command.h"
#include "core/error.h"
#include "io/json.h"
#include "tokenizer/tokenizer.h"

namespace moeforge::cli {
namespace {

using nlohmann::json;

// The lines of FILE ("-": standard input) with their 1-based numbers; every line must be non-blank.
std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream file;
  if (path != "-") {
    file.open(path, std::ios::binary);
    MF_CHECK(file.good(), kNotFound, "cannot open input file ", path);
  }
  std::istream& in = path == "-" ? std::cin : file;
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    MF_CHECK(line.find_first_not_of(" \t") != std::string::npos, kFormat, path == "-" ? "<stdin>" : path, ":", lines.size() + 1,
             ": blank line (every line must be a JSON object)");
    lines.push_back(std::move(line));
  }
  MF_CHECK(!in.bad(), kIo, "cannot read ", path);
  return lines;
}

json parse_line(const std::string& path, size_t number, const std::string& line) {
  json j = parse_json_text(line, str_cat(path, ":", number));
  MF_CHECK(j.is_object(), kFormat, path, ":", number, ": expected a JSON object, got ", j.type_name());
  return j;
}

std::vector<Encoding> encode_all(const Tokenizer& tokenizer, const std::vector<std::string>& texts, bool add_special,
                                 int64_t threads) {
  if (threads == 1) {
    std::vector<Encoding> out;
    out.reserve(texts.size());
    for (const auto& t : texts) out.push_back(tokenizer.encode(t, add_special));
    return out;
  }
  return tokenizer.encode_batch(texts, add_special);
}

int run_tokenize(const ParsedOptions& o) {
  const std::string input = o.str("input") == "-" ? "<stdin>" : o.str("input");  // as errors name it
  const Tokenizer tokenizer = Tokenizer::from_file(o.str("tokenizer"));
  const std::vector<std::string> lines = read_lines(o.str("input"));
  std::string out;

  if (o.flag("decode")) {
    for (size_t i = 0; i < lines.size(); ++i) {
      const json j = parse_line(input, i + 1, lines[i]);
      auto ids_it = j.find("ids");
      MF_CHECK(ids_it != j.end() && ids_it->is_array(), kFormat, input, ":", i + 1,
               ": expected {\"ids\": [...]} with a list of token ids");
      std::vector<int32_t> ids;
      for (const auto& id : *ids_it) {
        MF_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() <= INT32_MAX, kFormat, input,
                 ":", i + 1, ": token ids must be non-negative integers, got ", id.dump());
        ids.push_back(id.get<int32_t>());
      }
      out += json{{"text", tokenizer.decode(ids, /*skip_special_tokens=*/false)}}.dump(
          -1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
      out += '\n';
    }
  } else {
    std::vector<std::string> texts;
    texts.reserve(lines.size());
    size_t bytes = 0;
    for (size_t i = 0; i < lines.size(); ++i) {
      json j = parse_line(input, i + 1, lines[i]);
      auto text = j.find("text");
      MF_CHECK(text != j.end(), kFormat, input, ":", i + 1, ": missing key \"text\"");
      MF_CHECK(text->is_string(), kFormat, input, ":", i + 1, ": \"text\" must be a string, got ", text->type_name());
      texts.push_back(std::move(text->get_ref<std::string&>()));
      bytes += texts.back().size();
    }
    const auto start = std::chrono::steady_clock::now();
    const std::vector<Encoding> encodings =
        encode_all(tokenizer, texts, !o.flag("no_special_tokens"), o.integer("threads"));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const bool with_offsets = o.flag("offsets");
    size_t tokens = 0;
    for (const auto& e : encodings) {
      out += "{\"ids\":[";
      for (size_t k = 0; k < e.ids.size(); ++k) {
        if (k) out += ',';
        out += std::to_string(e.ids[k]);
      }
      out += ']';
      if (with_offsets) {
        out += ",\"offsets\":[";
        for (size_t k = 0; k < e.offsets.size(); ++k) {
          if (k) out += ',';
          out += '[' + std::to_string(e.offsets[k].first) + ',' + std::to_string(e.offsets[k].second) + ']';
        }
        out += ']';
      }
      out += "}\n";
      tokens += e.ids.size();
    }
    if (o.flag("benchmark")) {
      std::fprintf(stderr, "tokenize: %zu lines, %zu bytes, %zu tokens encoded in %.3f s: %.0f tokens/s, %.2f MB/s\n",
                   texts.size(), bytes, tokens, seconds, tokens / seconds, bytes / seconds / 1e6);
    }
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
  return 0;
}

CommandSpec tokenize_spec() {
  CommandSpec c;
  c.name = "tokenize";
  c.summary = "encode JSONL text with a tokenizer.json (or decode ids back)";
  c.description =
      "Reads FILE.jsonl (or standard input: --input -, the default), one JSON object per line. Encoding: each line holds a string \"text\"; stdout gets\n"
      "{\"ids\":[...]} per line, the ids of the Python tokenizers library's\n"
      "Tokenizer.from_file(PATH).encode(text, add_special_tokens=not --no-special-tokens).ids.\n"
      "--decode: each line holds \"ids\"; stdout gets {\"text\":\"...\"} (special tokens kept, incomplete\n"
      "UTF-8 as U+FFFD). A bad line is an error naming FILE:LINE (exit code 2) and nothing is written.";
  c.options = {
      {.name = "tokenizer", .type = OptionType::kPath, .help = "tokenizer.json or a folder holding one",
       .required = true},
      {.name = "input", .type = OptionType::kPath, .default_value = "-", .help = "JSONL file ('-': standard input)"},
      {.name = "no_special_tokens", .type = OptionType::kBool,
       .help = "do not add the post-processor's special tokens (BOS, ...)"},
      {.name = "decode", .type = OptionType::kBool, .help = "read {\"ids\"} lines, write {\"text\"} lines"},
      {.name = "offsets", .type = OptionType::kBool,
       .help = "also write each token's byte range [begin, end) in the text: {\"ids\":[...],\"offsets\":[[b,e],...]}"},
      {.name = "threads", .type = OptionType::kInt, .default_value = "0",
       .help = "encoding threads (0: all cores)", .range = NumericRange{.min = 0}},
      {.name = "benchmark", .type = OptionType::kBool, .help = "print the encoding time and tokens/s to stderr"},
  };
  c.run = run_tokenize;
  return c;
}

const CommandRegistration registration{tokenize_spec()};

}  // namespace
}  // namespace moeforge::cli
