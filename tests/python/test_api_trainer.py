"""moeforge.Trainer on a tiny Qwen3-MoE (the demo tokenizer, random weights from moeforge's own
from_config): it learns, evaluates, saves a folder that reloads to the trained model, and a chat
dataset gives the same run as the same data pre-tokenized with Transformers-style labels."""
import json
import os
import random

import numpy as np
import pytest

if not os.environ.get("MOEFORGE_PYTHON_MODULE_DIR"):
    pytest.skip("the Python module is not built (configure with -DMOEFORGE_PYTHON=ON)", allow_module_level=True)

import moeforge  # noqa: E402

def reverse_letters_examples(n, seed):
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        s = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(3 + i % 4))
        examples.append({"messages": [{"role": "user", "content": f"Reverse the letters: {s}"},
                                      {"role": "assistant", "content": s[::-1]}]})
    return examples


def training_args(output_dir, **overrides):
    args = dict(output_dir=str(output_dir), max_steps=30, per_device_train_batch_size=2, max_seq_length=64,
                learning_rate=3e-3, logging_steps=10, save_steps=0, warmup_steps=2, lr_scheduler_type="cosine",
                report_to="none")
    args.update(overrides)
    return moeforge.TrainingArguments(**args)


def test_trainer_learns_saves_and_reloads(tiny_model, tmp_path):
    model = moeforge.AutoModelForCausalLM.from_pretrained(tiny_model)
    train, held_out = reverse_letters_examples(120, 3), reverse_letters_examples(12, 4)
    trainer = moeforge.Trainer(model=model, args=training_args(tmp_path / "out"),
                               train_dataset=(e for e in train), eval_dataset=held_out)
    before = trainer.evaluate()["eval_loss"]
    result = trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert result.global_step == 30
    assert np.isfinite(result.training_loss)
    assert result.metrics["eval_loss"] == pytest.approx(after)
    assert after < 0.8 * before, (before, after)

    trainer.save_model(tmp_path / "final")
    assert (tmp_path / "final" / "tokenizer.json").exists()
    reloaded = moeforge.AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    tokenizer = moeforge.AutoTokenizer.from_pretrained(tmp_path / "final")
    batch = tokenizer.apply_chat_template(held_out[0]["messages"], return_tensors="np")
    np.testing.assert_allclose(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=1e-6)


def test_chat_dataset_equals_pretokenized_dataset(tiny_model, tmp_path):
    tokenizer = moeforge.AutoTokenizer.from_pretrained(tiny_model)
    train = reverse_letters_examples(60, 5)
    pretokenized = []
    for example in train:
        enc = tokenizer.apply_chat_template(example["messages"], return_assistant_tokens_mask=True)
        labels = [t if m else -100 for t, m in zip(enc["input_ids"], enc["assistant_masks"])]
        pretokenized.append({"input_ids": np.array(enc["input_ids"]), "labels": labels})
    losses = []
    for name, data in (("chat", train), ("tokens", pretokenized)):
        model = moeforge.AutoModelForCausalLM.from_pretrained(tiny_model)
        trainer = moeforge.Trainer(model=model, args=training_args(tmp_path / name, max_steps=8),
                                   train_dataset=data, eval_dataset=data[:8], processing_class=tokenizer)
        losses.append((trainer.train().training_loss, trainer.evaluate()["eval_loss"]))
    assert losses[0] == losses[1]


def test_gradient_checkpointing_trains_identically(tiny_model, tmp_path):
    # Recomputation reruns the same float32 ops with the forward's routing: the same losses, bit for bit.
    train = reverse_letters_examples(40, 6)
    results = []
    # Then: the first layer recomputed fully, the others selectively; the first layer's activations
    # offloaded to host memory (plain host copies on the CPU), alone and under selective recomputation.
    settings = ((False, 0, 0), (True, 0, 0), ("selective", 0, 0), ("selective", 1, 0), (False, 0, 1),
                ("selective", 0, 1))
    for setting, full_layers, offload_layers in settings:
        model = moeforge.AutoModelForCausalLM.from_pretrained(tiny_model)
        args = training_args(tmp_path / f"{setting}-{full_layers}-{offload_layers}", max_steps=6,
                             gradient_checkpointing=setting, recompute_full_layers=full_layers,
                             activation_offload_layers=offload_layers)
        trainer = moeforge.Trainer(model=model, args=args, train_dataset=train, eval_dataset=train[:4])
        results.append((trainer.train().training_loss, trainer.evaluate()["eval_loss"]))
    assert all(r == results[0] for r in results)
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        moeforge.TrainingArguments(output_dir=str(tmp_path), gradient_checkpointing="sometimes")


def test_trainer_errors(tiny_model, tmp_path):
    model = moeforge.AutoModelForCausalLM.from_pretrained(tiny_model)
    args = training_args(tmp_path / "out")
    data = reverse_letters_examples(4, 1)
    with pytest.raises(TypeError, match="learning_rat"):
        moeforge.TrainingArguments(output_dir=str(tmp_path), learning_rat=1e-3)
    with pytest.raises(TypeError, match="per_device_train_batch_size"):
        moeforge.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size="8")
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        moeforge.TrainingArguments(output_dir=str(tmp_path), gradient_accumulation_steps=0)
    with pytest.raises(TypeError, match="model"):
        moeforge.Trainer(model="Qwen/Qwen3-0.6B", args=args, train_dataset=data)
    with pytest.raises(TypeError, match=r"train_dataset\[1\]"):
        moeforge.Trainer(model=model, args=args, train_dataset=[data[0], "text"])
    with pytest.raises(ValueError, match=r"train_dataset\[0\].*labels\[1\]"):
        moeforge.Trainer(model=model, args=args, train_dataset=[{"input_ids": [5, 6, 7], "labels": [5, 9, 7]}])
    with pytest.raises(ValueError, match=r"train_dataset\[0\]"):
        moeforge.Trainer(model=model, args=args, train_dataset=[{"messages": "not a list"}])
    with pytest.raises(ValueError, match="lr_scheduler_type|schedule"):
        moeforge.Trainer(model=model, args=training_args(tmp_path / "bad", lr_scheduler_type="sawtooth"),
                         train_dataset=data).train()
    with pytest.raises(ValueError, match="eval_dataset"):
        moeforge.Trainer(model=model, args=args, train_dataset=data).evaluate()


def test_trainer_takes_a_datasets_dataset(tiny_model, tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_list(reverse_letters_examples(20, 2))
    model = moeforge.AutoModelForCausalLM.from_pretrained(tiny_model)
    trainer = moeforge.Trainer(model=model, args=training_args(tmp_path / "out", max_steps=2), train_dataset=data)
    assert trainer.train().global_step == 2


def test_output_dir_belongs_to_one_run(tiny_model, tmp_path):
    """The Python front end takes the output folder as the command line does (src/train/output_folder.h):
    an earlier run's checkpoints are refused unless the run resumes or overwrite_output_dir is set."""
    data = reverse_letters_examples(20, 2)

    def run(**overrides):
        model = moeforge.AutoModelForCausalLM.from_pretrained(tiny_model)
        args = training_args(tmp_path / "out", **{"max_steps": 2, "save_steps": 1, **overrides})
        return moeforge.Trainer(model=model, args=args, train_dataset=data).train()

    assert run().global_step == 2
    with pytest.raises(ValueError, match=r"holds an earlier run's files \(checkpoint-1, checkpoint-2, metrics.jsonl\)"):
        run()
    assert run(overwrite_output_dir=True).global_step == 2
    assert run(max_steps=3, resume_from_checkpoint="latest").global_step == 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_non_finite_weights_stop_training_and_are_not_saved(tiny_model, tmp_path):
    model = moeforge.AutoModelForCausalLM.from_pretrained(tiny_model)
    model.save_pretrained(tmp_path / "nan-model")
    from safetensors.numpy import load_file, save_file
    tensors = load_file(tmp_path / "nan-model" / "model.safetensors")
    q = tensors["model.layers.0.self_attn.q_proj.weight"].copy()
    q[0, 0] = np.nan
    tensors["model.layers.0.self_attn.q_proj.weight"] = q
    save_file(tensors, tmp_path / "nan-model" / "model.safetensors")
    broken = moeforge.AutoModelForCausalLM.from_pretrained(tmp_path / "nan-model")
    trainer = moeforge.Trainer(model=broken, args=training_args(tmp_path / "out", max_steps=3, save_steps=1),
                               train_dataset=reverse_letters_examples(20, 2))
    with pytest.raises(Exception, match=r"step 1: the loss is .*q_proj"):
        trainer.train()
    assert not (tmp_path / "out" / "checkpoint-1").exists()
