"""The arguments a Transformers user already passes (issue 21): each works as in Transformers or raises
a message that says what moeforge does instead, and the command line takes the same values."""
import json
import math
import os

import numpy as np
import pytest

if not os.environ.get("MOEFORGE_PYTHON_MODULE_DIR"):
    pytest.skip("the Python module is not built (configure with -DMOEFORGE_PYTHON=ON)", allow_module_level=True)

import moeforge  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from test_api_trainer import reverse_letters_examples, training_args  # noqa: E402


def test_training_arguments_take_transformers_precision_optimizer_and_eval_names(tmp_path):
    assert training_args(tmp_path, bf16=True).bf16 is True
    assert training_args(tmp_path, optim="adamw_torch").optim == "adamw_torch"
    assert training_args(tmp_path, eval_strategy="steps", logging_steps=4).eval_steps == 4  # as Transformers
    assert training_args(tmp_path, eval_strategy="steps", eval_steps=3).eval_steps == 3
    assert training_args(tmp_path, eval_strategy="epoch")._to_native().eval_strategy == "epoch"
    assert training_args(tmp_path)._to_native().eval_strategy == "steps"  # None: eval_steps as given
    with pytest.raises(ValueError, match="no float16 mode"):
        training_args(tmp_path, fp16=True)
    with pytest.raises(ValueError, match="optim='adafactor': moeforge trains with AdamW alone"):
        training_args(tmp_path, optim="adafactor")
    with pytest.raises(ValueError, match="eval_strategy must be no, steps or epoch, got 'epochs'"):
        training_args(tmp_path, eval_strategy="epochs")


def test_fsdp_and_deepspeed_mean_a_zero_stage_or_say_what_moeforge_does(tmp_path):
    assert training_args(tmp_path).zero_stage == 1
    assert training_args(tmp_path, fsdp="shard_grad_op auto_wrap")._to_native().zero_stage == 2
    assert training_args(tmp_path, fsdp=["no_shard"]).zero_stage == 1
    config = tmp_path / "ds_zero2.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comm": True, "reduce_bucket_size": "auto"},
                                  "bf16": {"enabled": "auto"}, "gradient_accumulation_steps": "auto"}))
    assert training_args(tmp_path, deepspeed=str(config))._to_native().zero_stage == 2
    assert training_args(tmp_path, deepspeed={"zero_optimization": {"stage": 1}}).zero_stage == 1
    assert training_args(tmp_path, fsdp=False).zero_stage == 1
    for full_shard in ("full_shard auto_wrap", True):
        with pytest.raises(ValueError, match="'full_shard' is not what moeforge does"):
            training_args(tmp_path, fsdp=full_shard)
    with pytest.raises(ValueError, match="zero_optimization.stage 3: moeforge keeps each process's parameters whole"):
        training_args(tmp_path, deepspeed={"zero_optimization": {"stage": 3}})
    with pytest.raises(ValueError, match="offload_optimizer.device 'cpu'"):
        training_args(tmp_path, deepspeed={"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}})
    with pytest.raises(ValueError, match="cannot read the DeepSpeed config"):
        training_args(tmp_path, deepspeed=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="zero_stage=2, and fsdp asks for zero_stage=1: choose one"):
        training_args(tmp_path, zero_stage=2, fsdp="no_shard")


def test_eval_strategy_epoch_evaluates_at_the_end_of_each_epoch(tiny_model, tmp_path):
    # One epoch's steps come from a one-epoch run taking a batch a step; at two batches a step, epoch e
    # ends in the step that takes its last batch.
    data, held_out = reverse_letters_examples(9, 6), reverse_letters_examples(4, 7)

    def run(name, **overrides):
        args = training_args(tmp_path / name, max_steps=-1, per_device_train_batch_size=1, **overrides)
        trainer = moeforge.Trainer(model=moeforge.AutoModelForCausalLM.from_pretrained(tiny_model), args=args,
                                   train_dataset=data, eval_dataset=held_out)
        trainer.train()
        return trainer.state

    per_epoch = run("one", num_train_epochs=1).global_step
    assert per_epoch % 2 == 1, "an epoch should end inside a step of two batches"
    state = run("two", num_train_epochs=2, gradient_accumulation_steps=2, eval_strategy="epoch", eval_steps=1)
    epoch_ends = [math.ceil(e * per_epoch / 2) for e in (1, 2)]
    assert state.global_step == epoch_ends[-1]
    # The last record is the evaluation after training.
    assert [r["step"] for r in state.log_history if "eval_loss" in r] == epoch_ends  # the last is also the final one


def test_python_and_command_line_take_the_same_values(tmp_path, run_moeforge):
    assert training_args(tmp_path, lr_scheduler_type="cosine_with_restarts").lr_scheduler_type == "cosine_with_restarts"

    def train(*options):
        return run_moeforge("train", "--model", tmp_path / "no-model", "--train_file", tmp_path / "t.jsonl",
                            "--output_dir", tmp_path / "out", *options, check=False)

    # The command line gets past these options (to the missing model) rather than refusing their values.
    for options in (["--lr_scheduler_type", "cosine_with_restarts"], ["--optim", "adamw_torch", "--bf16"]):
        result = train(*options)
        assert result.returncode == 2 and "no-model" in result.stderr, (options, result.stderr)
    refused = train("--optim", "adafactor")
    assert refused.returncode == 2 and "option 'optim' expects one of adamw_torch, adamw_torch_fused" in refused.stderr


def test_trainer_says_what_replaces_compute_metrics_and_callbacks(tiny_model, tmp_path):
    model = moeforge.AutoModelForCausalLM.from_pretrained(tiny_model)
    data = reverse_letters_examples(8, 1)
    with pytest.raises(ValueError, match="compute_metrics: moeforge's evaluation computes eval_loss alone"):
        moeforge.Trainer(model=model, args=training_args(tmp_path), train_dataset=data, compute_metrics=lambda p: {})
    with pytest.raises(ValueError, match="callbacks: .*metrics.jsonl"):
        moeforge.Trainer(model=model, args=training_args(tmp_path), train_dataset=data, callbacks=[object()])
    moeforge.Trainer(model=model, args=training_args(tmp_path), train_dataset=data, compute_metrics=None, callbacks=[])


def test_train_resumes_from_checkpoint_true_and_state_holds_the_history(tiny_model, tmp_path):
    data = reverse_letters_examples(60, 2)
    out = tmp_path / "out"
    first = moeforge.Trainer(model=moeforge.AutoModelForCausalLM.from_pretrained(tiny_model),
                             args=training_args(out, max_steps=10, save_steps=5), train_dataset=data)
    assert first.state.global_step == 0 and first.state.log_history == []
    first.train()
    assert first.state.global_step == 10
    del first  # a trainer holds its output_dir until it goes

    resumed = moeforge.Trainer(model=moeforge.AutoModelForCausalLM.from_pretrained(tiny_model),
                               args=training_args(out, max_steps=15, save_steps=5), train_dataset=data)
    result = resumed.train(resume_from_checkpoint=True)
    assert result.global_step == 15
    state = resumed.state
    assert (state.global_step, state.max_steps) == (15, 15)
    assert [r["step"] for r in state.log_history if "loss" in r] == list(range(1, 16))  # both runs, once each
    del resumed

    # Other examples: the checkpoint belongs to another run, and the refusal says what differs.
    other = moeforge.Trainer(model=moeforge.AutoModelForCausalLM.from_pretrained(tiny_model),
                             args=training_args(out, max_steps=20, save_steps=5), train_dataset=data[::-1])
    with pytest.raises(Exception, match="belongs to a run with other data or options: train_dataset"):
        other.train(resume_from_checkpoint=str(out / "checkpoint-15"))


def test_model_state_dict_to_and_parameters(tiny_model):
    model = moeforge.AutoModelForCausalLM.from_pretrained(tiny_model, trust_remote_code=True)
    saved = load_file(str(tiny_model / "model.safetensors"))
    state = model.state_dict()
    assert state.keys() == saved.keys()
    for name, value in saved.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    assert model.device == "cpu" and model.dtype == "float32"
    assert model.to("cpu") is model and model.to(dtype=np.float32) is model
    with pytest.raises(ValueError, match=r"this model is on cpu.*from_pretrained\(path, device='cuda'\)"):
        model.to("cuda:0")
    with pytest.raises(ValueError, match="computes in float32.*dtype='bfloat16'"):
        model.to("bfloat16")
    for method in (model.named_parameters, model.parameters):
        with pytest.raises(NotImplementedError, match="state_dict.*num_parameters.*freeze"):
            method()


def test_generate_pads_with_pad_token_id_and_refuses_beams(tiny_model):
    model = moeforge.AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = np.array([[5, 6, 7, 8], [9, 10, 11, 12]])
    free = model.generate(ids, max_new_tokens=4)
    stop = int(free[0, 4])  # row 0 stops at its first new token when that token is the eos
    out = model.generate(ids, max_new_tokens=4, eos_token_id=stop, pad_token_id=3)
    assert out[0, 4] == stop
    assert (out[0, 5:] == 3).all(), out
    with pytest.raises(ValueError, match="num_beams=2: moeforge has no beam search"):
        model.generate(ids, num_beams=2)


def test_tokenizer_save_pretrained_writes_a_folder_that_loads_the_same(tiny_model, tmp_path):
    tokenizer = moeforge.AutoTokenizer.from_pretrained(tiny_model, trust_remote_code=True)
    written = tokenizer.save_pretrained(tmp_path / "tok")
    assert {os.path.basename(p) for p in written} == {"tokenizer.json", "tokenizer_config.json"}
    again = moeforge.AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again.encode("Reverse the letters: ABC") == tokenizer.encode("Reverse the letters: ABC")

    tokenizer.chat_template = "{% for m in messages %}[{{ m.content }}]{% endfor %}"
    tokenizer.save_pretrained(tmp_path / "templated")
    templated = moeforge.AutoTokenizer.from_pretrained(tmp_path / "templated")
    assert templated.chat_template == tokenizer.chat_template
    assert templated.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "[hi]"
