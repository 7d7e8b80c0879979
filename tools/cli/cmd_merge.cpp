// moeforge merge: folds a PEFT LoRA adapter into its base model and writes the merged Hugging Face
// folder, what PEFT's merge_and_unload() followed by save_pretrained() gives.
#include <unistd.h>

#include <filesystem>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "io/hf_folder.h"
#include "model/causal_lm.h"
#include "train/adapter_folder.h"
#include "train/stop_signal.h"

namespace moeforge::cli {
namespace {

namespace fs = std::filesystem;

// output_dir may be new or an empty folder; one with files is replaced only when asked to.
void check_output_folder(const fs::path& out, bool overwrite, const fs::path& model_dir, const fs::path& adapter) {
  if (!fs::exists(out)) return;
  MF_CHECK(fs::is_directory(out), kInvalidArgument, "output_dir ", out.string(), " is a file, not a folder");
  for (const fs::path& input : {model_dir, adapter})
    MF_CHECK(!fs::exists(input) || !fs::equivalent(out, input), kInvalidArgument, "output_dir ", out.string(),
             " is an input folder; write the merged model to another one");
  MF_CHECK(fs::is_empty(out) || overwrite, kInvalidArgument, "output_dir ", out.string(),
           " is not empty; choose another folder or replace it with --overwrite_output_dir");
}

int run_merge(const ParsedOptions& o) {
  const fs::path model_dir = resolve_model_folder(o.str("model"));
  const fs::path adapter = o.str("adapter");
  fs::path out = o.str("output_dir");
  if (!out.has_filename()) out = out.parent_path();  // "out/" names the folder "out"
  check_output_folder(out, o.flag("overwrite_output_dir"), model_dir, adapter);

  ModelOptions mo;  // float32 on the CPU: the merge W + scale B A is computed at full precision
  mo.lora = read_adapter_config(adapter);
  if (!mo.lora->base_model_name_or_path.empty() && mo.lora->base_model_name_or_path != o.str("model"))
    MF_LOG_INFO(adapter.string(), "/adapter_config.json names the base model '", mo.lora->base_model_name_or_path,
                "'; merging into ", model_dir.string());
  CausalLM model = CausalLM::from_pretrained(model_dir, mo);
  const CausalLM::SavedWeights saved_weights = CausalLM::saved_weights_named(o.str("save_quantization"));
  model.check_saved_weights(saved_weights);
  model.load_adapter(adapter);
  model.merge_adapters();
  const DType dtype = o.str("dtype") == "auto" ? model.config().dtype.value_or(DType::kF32)
                                                : *dtype_from_torch_name(o.str("dtype"));

  // Written beside output_dir under a temporary name and renamed when complete: a failed or killed
  // merge leaves no folder that looks like a model. A signal now waits for the folder to be complete.
  StopSignalScope stop_signals;
  const fs::path tmp = out.parent_path() / str_cat(".", out.filename().string(), ".tmp-merge-", ::getpid());
  fs::remove_all(tmp);
  try {
    model.save_pretrained(tmp, dtype, model_dir, CausalLM::kMaxShardBytes, saved_weights);
    if (fs::exists(out)) fs::remove_all(out);
    fs::rename(tmp, out);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
  MF_LOG_INFO("merged ", adapter.string(), " (", model.adapter_tensors().size(), " adapter tensors) into ",
              model_dir.string(), ": ", out.string(), " (", dtype_torch_name(dtype), ")");
  if (StopSignalScope::received() != 0)
    MF_LOG_WARN("signal ", StopSignalScope::received(), " arrived during the save; the merged folder was completed first");
  return 0;
}

CommandSpec spec() {
  CommandSpec c;
  c.name = "merge";
  c.summary = "fold a PEFT LoRA adapter into its base model and write the merged Hugging Face folder";
  c.description =
      "Loads MODEL and the adapter folder ADAPTER (adapter_config.json sets the LoRA configuration,\n"
      "adapter_model.safetensors the weights), adds scale x B A to every adapted weight (float32, on\n"
      "the CPU: 4 bytes per parameter of host memory) and writes OUTPUT_DIR as a Hugging Face model\n"
      "folder: the base's tensor names and config.json, its tokenizer and generation files, the\n"
      "tensors in --dtype. The same as PEFT's merge_and_unload() then save_pretrained(). The folder is\n"
      "written under a temporary name and renamed when complete; on any error nothing is left.";
  c.options = {
      {.name = "model", .type = OptionType::kPath, .help = "base model folder (or cached model id)",
       .aliases = {"model_name_or_path"}, .required = true},
      {.name = "adapter", .type = OptionType::kPath,
       .help = "PEFT adapter folder (adapter_config.json + adapter_model.safetensors)",
       .aliases = {"adapter_name_or_path"}, .required = true},
      {.name = "output_dir", .type = OptionType::kPath, .help = "where the merged model folder goes", .required = true},
      {.name = "dtype", .type = OptionType::kChoice, .default_value = "auto",
       .help = "dtype of the saved tensors (auto: the dtype the base's config.json declares)",
       .choices = {"auto", "float32", "bfloat16", "float16"}},
      save_quantization_option(),
      {.name = "overwrite_output_dir", .type = OptionType::kBool, .help = "replace an output_dir that holds files"},
  };
  c.run = run_merge;
  return c;
}

const CommandRegistration registration{spec()};

}  // namespace
}  // namespace moeforge::cli
