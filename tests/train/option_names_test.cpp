// `moeforge train` speaks Transformers 5.17's TrainingArguments: every option is one of its fields
// (tests/data/training_arguments/fields.json, written by python/oracle/training_arguments_fields.py)
// or one of moeforge's own, listed here with why; shared numeric options keep Transformers' defaults
// unless listed; a Transformers 4.x name is refused with its replacement named.
#include <cstdlib>
#include <map>

#include "io/json.h"
#include "testing.h"
#include "training_options.h"

namespace moeforge {
namespace {

const Json& oracle() {
  static const Json doc = read_json_file(testing::test_data_dir() / "training_arguments" / "fields.json");
  return doc;
}

// Options that are no TrainingArguments field, and why.
const std::map<std::string, std::string>& moeforge_own() {
  static const std::map<std::string, std::string> own = {
      {"recipe", "the YAML recipe file"},
      {"model", "TrainingArguments holds no model (the Trainer takes it)"},
      {"train_file", "TrainingArguments holds no dataset"},
      {"eval_file", "TrainingArguments holds no dataset"},
      {"eval_ratio", "a held-out split of train_file"},
      {"chat_template", "data encoding (the tokenizer's in Transformers)"},
      {"max_seq_length", "TRL's SFTConfig packing length"},
      {"dataset_text_field", "TRL's SFTConfig dataset_text_field"},
      {"packing", "TRL's SFTConfig packing"},
      {"assistant_only_loss", "TRL's SFTConfig assistant_only_loss (moeforge's default: true)"},
      {"completion_only_loss", "TRL's SFTConfig completion_only_loss"},
      {"packing_overflow", "what packing does with a longer document"},
      {"skip_bad_lines", "dataset parsing"},
      {"overwrite_output_dir", "a 4.x field Transformers 5 dropped; moeforge keeps it for the output folder's life cycle"},
      {"device", "Transformers picks the device itself (use_cpu)"},
      {"dtype", "Transformers' bf16/fp16 flags select mixed precision; moeforge trains in the model's dtype or this one"},
      {"warmup_ratio", "a 4.x field; Transformers 5 takes a fraction < 1 in warmup_steps, which moeforge does not read yet"},
      {"optimizer_precision", "moeforge's AdamW precision modes"},
      {"recompute_full_layers", "Megatron's --recompute-num-layers; Transformers' checkpointing is all layers or none"},
      {"activation_offload_layers", "Megatron's --cpu-offloading-num-layers; Transformers has no activation offloading"},
      {"nan_policy", "what a non-finite loss or gradient does"},
      {"nproc_per_node", "torchrun's option: processes on this machine (expert parallelism)"},
      {"expert_parallel_size", "how many of the processes split the routed experts (Megatron's --expert-model-parallel-size)"},
      {"zero_stage", "DeepSpeed's ZeRO stage of the data-parallel copies: 1 shards the optimizer state, 2 the gradients too"},
      {"save_quantization", "the final model's weights as a quantised release stores them (GPT-OSS's MXFP4)"},
      {"freeze", "parameter groups left untrained"},
      {"router_bias_update_rate", "DeepSeek-V3's auxiliary-loss-free balancing, which Transformers does not train"},
      {"lora_r", "PEFT's LoraConfig r (LoRA is PEFT's, not the Trainer's)"},
      {"lora_alpha", "PEFT's LoraConfig lora_alpha"},
      {"lora_dropout", "PEFT's LoraConfig lora_dropout"},
      {"lora_target_modules", "PEFT's LoraConfig target_modules"},
      {"lora_target_parameters", "PEFT's LoraConfig target_parameters"},
      {"use_rslora", "PEFT's LoraConfig use_rslora"},
      {"adapter", "a PEFT adapter folder to start from (PeftModel.from_pretrained)"},
  };
  return own;
}

// Defaults that differ from Transformers', and why.
const std::map<std::string, std::string>& other_defaults() {
  static const std::map<std::string, std::string> differ = {
      {"logging_steps", "a progress line every 10 steps rather than every 500"},
      {"per_device_train_batch_size", "Transformers' 8 is the most: fewer rows when one epoch of the data fills fewer"},
  };
  return differ;
}

TEST(OptionNames, EveryTrainOptionIsATransformersFieldOrListedAsMoeforgesOwn) {
  const Json& fields = oracle().at("fields");
  ASSERT_EQ(oracle().at("transformers").get<std::string>(), "5.17.0");
  for (const cli::OptionSpec& o : cli::training_option_table()) {
    if (moeforge_own().count(o.name))
      EXPECT_FALSE(fields.contains(o.name)) << o.name << " is a Transformers field: remove it from moeforge_own()";
    else
      EXPECT_TRUE(fields.contains(o.name)) << "--" << o.name << " is not a Transformers 5.17 TrainingArguments field";
  }
}

TEST(OptionNames, SharedNumericOptionsKeepTransformersDefaults) {
  const Json& fields = oracle().at("fields");
  int compared = 0;
  for (const cli::OptionSpec& o : cli::training_option_table()) {
    if (!fields.contains(o.name) || other_defaults().count(o.name)) continue;
    const Json& theirs = fields.at(o.name);
    if (!theirs.is_number() || (o.type != cli::OptionType::kInt && o.type != cli::OptionType::kFloat)) continue;
    EXPECT_EQ(std::strtod(o.default_value.c_str(), nullptr), theirs.get<double>()) << o.name;
    ++compared;
  }
  EXPECT_GE(compared, 10);  // the comparison ran (14 options today)
  for (const auto& [name, why] : other_defaults()) EXPECT_TRUE(fields.contains(name)) << name;
}

TEST(OptionNames, TransformersFourNamesNameTheirReplacement) {
  for (const auto& [old_name, new_name] : oracle().at("former_names").items()) {
    bool found = false;
    for (const cli::OptionSpec& o : cli::training_option_table())
      for (const auto& f : o.former_names) found |= f == old_name && o.name == new_name.get<std::string>();
    EXPECT_TRUE(found) << old_name << " -> " << new_name;
    auto r = testing::run_moeforge({"train", "--" + old_name, "4"});
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("'" + old_name + "' is the Transformers 4.x name of '" + new_name.get<std::string>() + "'"),
              std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace moeforge
