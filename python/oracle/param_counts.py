#!/usr/bin/env python3
"""Oracle for src/arch: parameter counts and tensor names of models built by Transformers.

For each config folder, builds the model with Transformers on the meta device (no memory, no
weights) and records:
  * num_parameters() and num_parameters(exclude_embeddings=True);
  * the runtime state_dict names and shapes (Transformers 5 fuses routed experts into 3-D
    parameters such as mlp.experts.gate_up_proj);
  * the checkpoint names and shapes, i.e. what save_pretrained would write: the state_dict with
    tied weights removed and the weight conversion reverted (per-expert tensors, Mixtral's
    block_sparse_moe/w1/w2/w3, Nemotron-H's backbone. prefix).
Names are folded over the expert index (".experts.17." -> ".experts.{e}.") with a count, so that
the 256-expert models stay small; tests/arch folds moeforge's list the same way.

Quantization: `quantization_config` is removed before building (GPT-OSS mxfp4, DeepSeek-V3 fp8), so
experts and linears are plain unquantized parameters, which is the layout moeforge trains; each
model's "notes" say when this was done.

Run on the GPU machine (PyTorch 2.11 + Transformers 5.17; no network needed), from the repo root:
    python3 python/oracle/param_counts.py --out tests/data/configs/param_counts.json
Default inputs: every tests/data/configs/<name>/config.json.
"""

import argparse
import copy
import json
import os
import re
import sys
import tempfile

EXPERT_INDEX = re.compile(r"\.experts\.(\d+)\.")


def fold(named_shapes):
    """[(name, shape)] -> sorted [[folded_name, shape, count]]."""
    counts = {}
    for name, shape in named_shapes:
        key = (EXPERT_INDEX.sub(".experts.{e}.", name), tuple(shape))
        counts[key] = counts.get(key, 0) + 1
    return [[name, list(shape), n] for (name, shape), n in sorted(counts.items())]


def inspect_model(config_dir):
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    with open(os.path.join(config_dir, "config.json")) as f:
        raw = json.load(f)
    notes = []
    stripped = copy.deepcopy(raw)
    if "quantization_config" in stripped:
        method = stripped["quantization_config"].get("quant_method")
        del stripped["quantization_config"]
        notes.append(f"quantization_config ({method}) removed: parameters built unquantized")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(stripped, f)
        # Native Transformers classes only (auto_map remote code is not used).
        config = AutoConfig.from_pretrained(tmp, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)

    state_dict = model.state_dict()
    runtime = [(k, list(v.shape)) for k, v in state_dict.items()]
    parameter_names = {name for name, _ in model.named_parameters()}
    buffers = sorted({EXPERT_INDEX.sub(".experts.{e}.", k) for k in state_dict if k not in parameter_names})
    result_checkpoint, checkpoint_error = None, None
    try:
        checkpoint_state = revert_weight_conversion(model, remove_tied_weights_from_state_dict(dict(state_dict), model))
        result_checkpoint = fold([(k, list(v.shape)) for k, v in checkpoint_state.items()])
    except Exception as e:  # keep the counts even if reverting fails on meta tensors; say why
        checkpoint_error = f"{type(e).__name__}: {e}"
    return {
        "model_type": raw.get("model_type"),
        "hf_class": type(model).__name__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "notes": notes,
        "num_parameters": model.num_parameters(),
        "num_parameters_exclude_embeddings": model.num_parameters(exclude_embeddings=True),
        "state_dict_buffers": buffers,
        "state_dict": fold(runtime),
        "checkpoint": result_checkpoint,
        "checkpoint_error": checkpoint_error,
    }


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_root = os.path.normpath(os.path.join(here, "..", "..", "tests", "data", "configs"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config_dirs", nargs="*", help="folders holding config.json")
    parser.add_argument("--out", default=os.path.join(default_root, "param_counts.json"))
    args = parser.parse_args()

    dirs = args.config_dirs or sorted(
        os.path.join(default_root, d) for d in os.listdir(default_root)
        if os.path.isfile(os.path.join(default_root, d, "config.json")))
    results = {}
    for d in dirs:
        name = os.path.basename(os.path.normpath(d))
        print(f"building {name} on the meta device ...", file=sys.stderr, flush=True)
        results[name] = inspect_model(d)
        print(f"  num_parameters {results[name]['num_parameters']:,}", file=sys.stderr, flush=True)
    with open(args.out, "w") as f:
        json.dump({"generated_by": "python/oracle/param_counts.py", "models": results}, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
