// moeforge pretokenize: a JSONL dataset (text, messages or prompt/completion lines) to a .mfbin file
// of token ids, document boundaries and loss flags (src/data/token_corpus.h), which training then
// memory-maps instead of tokenizing again.
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

#include "chat/chat_template.h"
#include "command.h"
#include "core/error.h"
#include "data/dataset.h"
#include "tokenizer/tokenizer.h"
#include "training_options.h"

namespace moeforge::cli {
namespace {

int run_pretokenize(const ParsedOptions& o) {
  const std::filesystem::path tokenizer_path = o.str("tokenizer");
  const std::filesystem::path folder =
      std::filesystem::is_directory(tokenizer_path) ? tokenizer_path : tokenizer_path.parent_path();
  const Tokenizer tokenizer = Tokenizer::from_file(tokenizer_path);
  // A tokenizer without a chat template still encodes text and plain prompt/completion lines.
  std::optional<chat::ChatTemplate> chat;
  const std::filesystem::path template_file = o.is_set("chat_template") ? o.str("chat_template") : "";
  try {
    chat.emplace(chat::ChatTemplate::from_folder(folder, template_file));
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kNotFound || !template_file.empty()) throw;
  }
  const data::ExampleEncoder encoder(tokenizer, chat ? &*chat : nullptr,
                                     data::eos_token_id_from_config(tokenizer_path, tokenizer),
                                     encoder_options_from(o));
  if (const chat::ChatTemplate* picked = encoder.messages_template(); picked != nullptr && picked != &*chat)
    std::fprintf(stderr, "pretokenize: 'messages' lines are rendered with %s, moeforge's training variant of %s\n",
                 picked->source_name().c_str(), chat->source_name().c_str());
  data::LoadReport report;
  const data::TokenCorpus corpus =
      data::load_dataset(o.str("input"), encoder,
                       {.skip_bad_lines = o.flag("skip_bad_lines"), .num_threads = static_cast<int>(o.integer("threads"))},
                       &report);
  corpus.write_mfbin(o.str("output"));

  uint64_t trained = 0;
  for (uint64_t t = 0; t < corpus.num_tokens(); ++t) trained += corpus.loss_bit(t);
  for (const std::string& error : report.bad_line_errors) std::fprintf(stderr, "skipped %s\n", error.c_str());
  std::fprintf(stderr, "pretokenize: %lld lines, %llu documents, %llu tokens (%llu trained), %lld bad lines skipped -> %s\n",
               static_cast<long long>(report.lines), static_cast<unsigned long long>(corpus.num_documents()),
               static_cast<unsigned long long>(corpus.num_tokens()), static_cast<unsigned long long>(trained),
               static_cast<long long>(report.bad_lines), o.str("output").c_str());
  return 0;
}

CommandSpec pretokenize_spec() {
  CommandSpec c;
  c.name = "pretokenize";
  c.summary = "tokenize a JSONL dataset into a memory-mappable .mfbin file";
  c.description =
      "Reads FILE.jsonl, one example per line: {\"text\": ...}, {\"messages\": [...], \"tools\": [...]},\n"
      "{\"prompt\": ..., \"completion\": ...}, Alpaca or ShareGPT lines (or FILE.txt, one text per line), encoded with the tokenizer and the chat template of its folder\n"
      "exactly as training encodes them, with the same --dataset_text_field, --assistant_only_loss and\n"
      "--completion_only_loss (src/data/example_encoder.h states the rules and the loss masks).\n"
      "Writes the .mfbin file (token ids, document offsets, loss bits) atomically. A bad line is an error\n"
      "naming FILE:LINE (exit code 2) unless --skip-bad-lines, which reports and counts them.";
  c.options = {
      {.name = "tokenizer", .type = OptionType::kPath,
       .help = "tokenizer.json or a model/tokenizer folder (its tokenizer_config.json gives the chat template "
               "and eos_token)",
       .required = true},
      {.name = "input", .type = OptionType::kPath, .help = "JSONL dataset", .required = true},
      {.name = "output", .type = OptionType::kPath, .help = ".mfbin file to write", .required = true},
      {.name = "chat_template", .type = OptionType::kPath,
       .help = "a Jinja chat template file used instead of the tokenizer folder's (e.g. one with {% generation %} "
               "blocks), or moeforge:NAME for a training template moeforge ships (picked automatically when the "
               "folder's template is the one it was made from)"},
      {.name = "skip_bad_lines", .type = OptionType::kBool, .help = "leave bad lines out and count them"},
      {.name = "threads", .type = OptionType::kInt, .default_value = "0", .help = "encoding threads (0: all cores)",
       .range = NumericRange{.min = 0}},
  };
  const std::vector<OptionSpec> encoding = encoder_option_table();  // as train encodes
  c.options.insert(c.options.end(), encoding.begin(), encoding.end());
  c.run = run_pretokenize;
  return c;
}

const CommandRegistration registration{pretokenize_spec()};

}  // namespace
}  // namespace moeforge::cli
