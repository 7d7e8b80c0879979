// moeforge generate: greedy or sampled text from any supported checkpoint, through the model's chat
// template — the user's check that a fine-tune did what they wanted.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "chat/chat_template.h"
#include "command.h"
#include "core/error.h"
#include "data/example_encoder.h"
#include "io/hf_folder.h"
#include "model/generate.h"
#include "tokenizer/tokenizer.h"

namespace moeforge::cli {
namespace {

int run_generate(const ParsedOptions& o) {
  const std::string dir = resolve_model_folder(o.str("model")).string();
  ModelOptions mo;
  mo.device = option_device(o);
  mo.dtype = option_dtype(o);
  CausalLM model = CausalLM::from_pretrained(dir, mo);
  Tokenizer tokenizer = Tokenizer::from_file(dir);

  std::string text = o.str("prompt");
  bool add_special_tokens = true;
  if (!o.flag("raw")) {
    // As a chat: the prompt is one user message, rendered with the generation prompt.
    chat::ChatTemplate chat =
        chat::ChatTemplate::from_folder(dir, o.is_set("chat_template") ? o.str("chat_template") : std::string());
    chat::ChatRequest request;
    request.messages = nlohmann::ordered_json::array();
    if (o.is_set("system")) request.messages.push_back({{"role", "system"}, {"content", o.str("system")}});
    request.messages.push_back({{"role", "user"}, {"content", text}});
    request.add_generation_prompt = true;
    text = chat.render(request).text;
    add_special_tokens = false;  // the template already placed them
  }
  GenerationConfig gc;
  gc.max_new_tokens = o.integer("max_new_tokens");
  gc.do_sample = o.flag("do_sample");
  gc.temperature = o.real("temperature");
  gc.top_k = o.integer("top_k");
  gc.top_p = o.real("top_p");
  gc.seed = static_cast<uint64_t>(o.integer("seed"));
  for (int64_t id : model.config().eos_token_ids) gc.eos_token_ids.push_back(id);
  if (auto eos = data::eos_token_id_from_config(dir, tokenizer)) gc.eos_token_ids.push_back(*eos);
  std::vector<int32_t> ids = tokenizer.encode(text, add_special_tokens).ids;
  std::vector<int32_t> out = generate(model, ids, gc);
  std::string completion = tokenizer.decode(out, /*skip_special_tokens=*/true);
  std::fwrite(completion.data(), 1, completion.size(), stdout);
  std::fputc('\n', stdout);
  return 0;
}

CommandSpec spec() {
  CommandSpec c;
  c.name = "generate";
  c.summary = "generate text from a model folder (greedy or sampled), through its chat template";
  c.options = {
      {.name = "model", .type = OptionType::kPath, .help = "model folder or cached model id", .required = true},
      {.name = "prompt", .type = OptionType::kString, .help = "the user message (or raw text with --raw)",
       .required = true, .positional = true},
      {.name = "raw", .type = OptionType::kBool, .help = "use the prompt as raw text, without the chat template"},
      {.name = "system", .type = OptionType::kString, .help = "a system message before the prompt"},
      {.name = "chat_template", .type = OptionType::kPath,
       .help = "Jinja file (or moeforge:NAME) replacing the model folder's chat template"},
      {.name = "max_new_tokens", .type = OptionType::kInt, .default_value = "64", .help = "tokens to generate at most",
       .range = NumericRange{.min = 0}},
      {.name = "do_sample", .type = OptionType::kBool, .help = "sample instead of greedy decoding"},
      {.name = "temperature", .type = OptionType::kFloat, .default_value = "1", .help = "sampling temperature",
       .range = NumericRange{.min = 0, .min_open = true}},
      {.name = "top_k", .type = OptionType::kInt, .default_value = "0", .help = "sample among the k most likely (0: all)",
       .range = NumericRange{.min = 0}},
      {.name = "top_p", .type = OptionType::kFloat, .default_value = "1", .help = "nucleus sampling mass",
       .range = NumericRange{.min = 0, .max = 1, .min_open = true}},
      {.name = "seed", .type = OptionType::kInt, .default_value = "0", .help = "sampling seed",
       .range = NumericRange{.min = 0}},
      device_option(),
      dtype_option(),
  };
  c.run = run_generate;
  return c;
}

const CommandRegistration registration{spec()};

}  // namespace
}  // namespace moeforge::cli
