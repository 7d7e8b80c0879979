// moeforge chat-template: renders a conversation with a model's chat template exactly as
// Transformers' apply_chat_template does; --assistant-mask adds the tokens and their assistant mask.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "chat/assistant_mask.h"
#include "chat/chat_template.h"
#include "command.h"
#include "core/error.h"
#include "io/json.h"
#include "tokenizer/tokenizer.h"

namespace moeforge::cli {
namespace {

using nlohmann::ordered_json;

chat::ChatRequest read_request(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MF_CHECK(in.good(), kNotFound, "cannot open messages file ", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  ordered_json j = parse_json_text<ordered_json>(ss.str(), path);
  MF_CHECK(j.is_object(), kFormat, path, ": expected an object {\"messages\": [...], \"tools\": [...]}");
  chat::ChatRequest request;
  MF_CHECK(j.contains("messages") && j["messages"].is_array(), kFormat, path, ": \"messages\" must be an array");
  request.messages = j["messages"];
  for (size_t i = 0; i < request.messages.size(); ++i)
    MF_CHECK(request.messages[i].is_object(), kFormat, path, ": messages[", i, "] must be an object");
  if (j.contains("tools") && !j["tools"].is_null()) {
    MF_CHECK(j["tools"].is_array(), kFormat, path, ": \"tools\" must be an array");
    request.tools = j["tools"];
  }
  return request;
}

int run_chat_template(const ParsedOptions& o) {
  const std::filesystem::path folder = o.str("tokenizer");
  const chat::ChatTemplate chat = chat::ChatTemplate::from_folder(folder);
  chat::ChatRequest request = read_request(o.str("messages"));
  request.add_generation_prompt = o.flag("add_generation_prompt");
  std::string out;
  if (o.flag("assistant_mask")) {
    const Tokenizer tokenizer = Tokenizer::from_file(folder);
    const chat::MaskedEncoding masked = o.str("mask_rule") == "prefix" ? chat::prefix_mask(chat, tokenizer, request)
                                                                       : chat::generation_mask(chat, tokenizer, request);
    out = "{\"ids\": [";
    for (size_t i = 0; i < masked.ids.size(); ++i) out += (i ? ", " : "") + std::to_string(masked.ids[i]);
    out += "], \"assistant_mask\": [";
    for (size_t i = 0; i < masked.assistant_mask.size(); ++i) out += (i ? ", " : "") + std::to_string(masked.assistant_mask[i]);
    out += "]}\n";
  } else {
    out = chat.render(request).text;
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
  return 0;
}

CommandSpec chat_template_spec() {
  CommandSpec c;
  c.name = "chat-template";
  c.summary = "render a conversation with a model's chat template (as apply_chat_template)";
  c.description =
      "Reads FILE.json {\"messages\": [...], \"tools\": [...]} (tools optional) and renders it with the chat\n"
      "template of PATH (chat_template.jinja or tokenizer_config.json's chat_template), passing the\n"
      "special tokens of tokenizer_config.json as Transformers does. stdout is exactly the rendered text.\n"
      "--assistant-mask: one JSON line {\"ids\": [...], \"assistant_mask\": [...]} instead, as\n"
      "apply_chat_template(..., tokenize=True, return_dict=True, return_assistant_tokens_mask=True)\n"
      "gives (all zeros for templates without {% generation %} blocks, as there). --mask-rule prefix\n"
      "instead marks what each assistant message adds after the generation prompt (src/chat/assistant_mask.h),\n"
      "for templates without generation blocks; it renders the conversation without the generation prompt.";
  c.options = {
      {.name = "tokenizer", .type = OptionType::kPath,
       .help = "folder with tokenizer_config.json (and tokenizer.json for --assistant-mask)", .required = true},
      {.name = "messages", .type = OptionType::kPath, .help = "JSON file {\"messages\": [...], \"tools\": [...]}",
       .required = true},
      {.name = "add_generation_prompt", .type = OptionType::kBool,
       .help = "end with the prompt that starts an assistant turn"},
      {.name = "assistant_mask", .type = OptionType::kBool,
       .help = "print token ids and the assistant-token mask as one JSON line"},
      {.name = "mask_rule", .type = OptionType::kChoice, .default_value = "generation",
       .help = "generation: Transformers' {% generation %} spans; prefix: the prefix-rendering rule",
       .choices = {"generation", "prefix"}},
  };
  c.run = run_chat_template;
  return c;
}

const CommandRegistration registration{chat_template_spec()};

}  // namespace
}  // namespace moeforge::cli
