// moeforge's training variants of model chat templates: {% generation %} blocks around what the
// model writes in each assistant turn, so chat fine-tuning trains on those tokens exactly as
// Transformers' return_assistant_tokens_mask marks them (chat/assistant_mask.h, rule 1).
//
// Models ship templates without generation blocks, and some (Qwen3's) render earlier assistant
// turns differently once later turns exist, which the prefix rule cannot place. The variants follow
// one rule: the trained span of an assistant turn is what the model writes for it, from after the
// role header (the generation prompt) through the end of the turn (its end-of-turn token and what
// the template puts after it, as the prefix rule marks); everything else renders as the model's
// template does, except where a variant's header comment says otherwise and why.
//
// The variants are the .jinja files of src/chat/training_templates/, compiled into the library
// (src/chat/CMakeLists.txt). One is picked for a model when the model's template is, byte for byte,
// the one it was made from (compared by SHA-256); `--chat_template moeforge:NAME` names one.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace moeforge::chat {

struct TrainingTemplate {
  std::string_view name;    // the file's stem: "qwen3"
  std::string_view source;  // its Jinja text
};

// The prefix that names a shipped variant where a template file is expected: "moeforge:qwen3".
inline constexpr std::string_view kTrainingTemplatePrefix = "moeforge:";

// Defined in the file src/chat/CMakeLists.txt generates from training_templates/*.jinja.
const std::vector<TrainingTemplate>& training_templates();

// The variant made from `model_template` (a model's template text), or null when there is none.
const TrainingTemplate* training_template_for(std::string_view model_template);

// The variant called `name`; an unknown name is an Error(kNotFound) listing the shipped ones.
const TrainingTemplate& training_template_named(std::string_view name);

// "moeforge:NAME" of each, comma-separated, for messages that list them.
std::string training_template_names();

}  // namespace moeforge::chat
