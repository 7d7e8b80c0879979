// moeforge train: fine-tune a model folder on a dataset, from flags and/or a YAML recipe.
#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "dist/launch.h"
#include "train/session.h"
#include "train/stop_signal.h"
#include "training_options.h"

namespace moeforge::cli {
namespace {

CommandSpec spec();

int run_train(const ParsedOptions& o) {
  const int64_t nproc = o.integer("nproc_per_node");
  MF_CHECK(nproc >= 1 && nproc <= 4096, kInvalidArgument, "nproc_per_node ", nproc, " is not a process count (1 to 4096)");
  if (nproc > 1 && detect_launch().launcher == "none") exec_under_mpirun(static_cast<int>(nproc));
  // Until training begins nothing needs saving: a signal while loading ends the process at once.
  exit_on_stop_signals();
  SessionOptions s = session_options_from(o);
  // Under mpirun or srun: every process trains its rows of every batch; the routed experts are split
  // over all of them, or over consecutive groups of expert_parallel_size.
  const std::shared_ptr<ProcessGroup> world = join_launch_world(s.model_options.device);
  s.model_options.expert_group = world;
  const int64_t ep = o.integer("expert_parallel_size");
  const int64_t processes = world ? world->size() : 1;
  MF_CHECK(ep >= 0 && (ep == 0 || processes % ep == 0), kInvalidArgument, "expert_parallel_size ", ep,
           " does not divide the ", processes, " processes of this run");
  if (world && ep > 0 && ep < processes) {
    s.model_options.data_group = world;
    s.model_options.expert_group = world->split(world->rank() / static_cast<int>(ep), world->rank());
  }
  s.config_record = resolved_config_yaml(spec(), o);
  TrainingSession session(s);
  TrainResult r = session.run();
  if (r.interrupted) MF_LOG_INFO("interrupted after step ", r.steps, "; resume with --resume_from_checkpoint latest");
  return 0;
}

CommandSpec spec() {
  CommandSpec c;
  c.name = "train";
  c.summary = "fine-tune a model on a dataset (flags, MOEFORGE_* environment, or a YAML recipe)";
  c.description =
      "Options carry Hugging Face TrainingArguments' names; a recipe file is a YAML mapping of them\n"
      "(precedence: flags > environment > recipe > defaults). The output folder receives checkpoints\n"
      "(checkpoint-N: a Hugging Face model folder plus optimizer and data state), metrics.jsonl,\n"
      "report.html, the resolved moeforge_config.yaml and, at the end, the trained model.\n"
      "LoRA (lora_r > 0, or adapter DIR to continue a PEFT adapter): the base model stays frozen and\n"
      "only the adapters train; checkpoints and the final save hold the adapter as PEFT writes it\n"
      "(adapter_config.json + adapter_model.safetensors, float32) and the tokenizer files, not the\n"
      "base ('moeforge merge' folds an adapter into a full model folder).\n"
      "SIGINT/SIGTERM finish the current step, save a checkpoint and exit 0.";
  c.options = training_option_table();
  c.run = run_train;
  return c;
}

const CommandRegistration registration{spec()};

}  // namespace
}  // namespace moeforge::cli
