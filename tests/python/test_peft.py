"""moeforge's PEFT front end (moeforge.peft: LoraConfig, get_peft_model, PeftModel, Trainer(peft_config=))
against PEFT 0.21 + Transformers 5.17 (tests/data/lora, written by python/oracle/lora_fixtures.py):
an adapter folder PEFT wrote gives PEFT's logits and loss, get_peft_model resolves PEFT's arguments as
PEFT does and saves PEFT's keys, merge_and_unload equals PEFT's; and LoRA training from Python trains
the adapters only. No torch or peft here: the fixtures hold what they computed."""
import json
import os
import shutil
import warnings

import numpy as np
import pytest
from conftest import real_token_logits, rel_l2
from safetensors.numpy import load_file

if not os.environ.get("MOEFORGE_PYTHON_MODULE_DIR"):
    pytest.skip("the Python module is not built (configure with -DMOEFORGE_PYTHON=ON)", allow_module_level=True)

import moeforge  # noqa: E402
from moeforge import (AutoModelForCausalLM, AutoPeftModelForCausalLM, LoraConfig, PeftModel, Trainer,  # noqa: E402
                      TrainingArguments, get_peft_model)

CASES = ["lora_attn", "lora_attn_experts", "lora_converted_mlp_names", "lora_gpt_oss", "lora_nemotron_h_latent"]
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
# The LoraConfig arguments python/oracle/lora_fixtures.py gave PEFT for each case.
PEFT_ARGUMENTS = {
    "lora_attn": dict(target_modules=ATTN, r=4, lora_alpha=8),
    "lora_attn_experts": dict(target_modules=ATTN, target_parameters=EXPERTS, r=3, lora_alpha=5, use_rslora=True),
    "lora_converted_mlp_names": dict(target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"], r=2,
                                     lora_alpha=6),
    # GPT-OSS's experts are stored transposed with gate and up interleaved; its router is mlp.router.
    "lora_gpt_oss": dict(target_modules=ATTN, target_parameters=EXPERTS + ["mlp.router.weight"], r=2, lora_alpha=4),
    # Nemotron-H's latent expert projections (plain Linear modules), Mamba in_proj and non-gated experts.
    "lora_nemotron_h_latent": dict(target_modules=ATTN + ["in_proj", "fc1_latent_proj", "fc2_latent_proj"],
                                   target_parameters=["mixer.experts.up_proj", "mixer.experts.down_proj"], r=2,
                                   lora_alpha=4),
}
FIXTURE_LORA = dict(init_lora_weights=False, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")



@pytest.fixture(scope="module")
def lora_data(source_dir):
    return source_dir / "tests" / "data" / "lora"


def forward(model, folder):
    batch = load_file(folder / "batch.safetensors")
    return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"])


def peft_model(folder, **kwargs):
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), folder / "adapter", **kwargs)


def tensor_shapes(path):
    return {k: list(v.shape) for k, v in load_file(path).items()}


# ---- adapters PEFT wrote ---------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_peft_adapter_gives_peft_logits_and_loss(case, lora_data):
    folder = lora_data / case
    expected = load_file(folder / "expected.safetensors")
    model = peft_model(folder)
    assert isinstance(model, PeftModel) and isinstance(model, moeforge.PreTrainedModel)
    out = forward(model, folder)
    assert rel_l2(real_token_logits(out.logits, folder), real_token_logits(expected["logits"], folder)) <= 1e-4
    assert abs(out.loss - float(expected["loss"])) <= 1e-5 * abs(float(expected["loss"]))
    # The base model without the adapter computes something else (the fixture's B is random).
    assert rel_l2(forward(AutoModelForCausalLM.from_pretrained(folder), folder).logits, expected["logits"]) > 1e-3


@pytest.mark.parametrize("case", CASES)
def test_save_pretrained_writes_peft_adapter_folder(case, lora_data, tmp_path):
    folder = lora_data / case
    peft = json.loads((folder / "adapter_keys.json").read_text())
    model = peft_model(folder)
    model.save_pretrained(tmp_path / "adapter")
    assert sorted(os.listdir(tmp_path / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert tensor_shapes(tmp_path / "adapter" / "adapter_model.safetensors") == peft["keys"]
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    original = load_file(folder / "adapter" / "adapter_model.safetensors")
    for key, tensor in original.items():
        assert saved[key].dtype == np.float32
        np.testing.assert_array_equal(saved[key], tensor, err_msg=key)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    want = peft["adapter_config"]
    for key in ("r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "peft_type", "task_type", "bias"):
        assert config[key] == want[key], key
    assert sorted(config["target_modules"]) == sorted(want["target_modules"])
    assert sorted(config["target_parameters"] or []) == sorted(want["target_parameters"] or [])


@pytest.mark.parametrize("case", CASES)
def test_merge_and_unload_equals_peft_merge(case, lora_data, tmp_path):
    folder = lora_data / case
    model = peft_model(folder)
    before = forward(model, folder)
    merged = model.merge_and_unload()
    assert type(merged) is moeforge.PreTrainedModel
    after = forward(merged, folder)
    assert rel_l2(after.logits, before.logits) <= 1e-5
    merged.save_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / "config.json").exists()
    mine, peft = load_file(tmp_path / "merged" / "model.safetensors"), load_file(folder / "merged" / "model.safetensors")
    assert set(mine) == set(peft)
    for name, tensor in peft.items():
        assert rel_l2(mine[name], tensor) <= 1e-5, name
    # The merged folder is an ordinary model folder.
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert rel_l2(forward(reloaded, folder).logits, before.logits) <= 1e-5


def test_merge_and_unload_leaves_the_wrapper_without_adapter(lora_data, tmp_path):
    model = peft_model(lora_data / "lora_attn")
    base = model.merge_and_unload()
    assert base is model.get_base_model()
    with pytest.raises(ValueError, match="merged or unloaded"):
        model.save_pretrained(tmp_path / "x")
    with pytest.raises(ValueError, match="no adapter"):
        model.merge_and_unload()


def test_unload_gives_the_base_model_back(lora_data):
    folder = lora_data / "lora_attn_experts"
    base_logits = forward(AutoModelForCausalLM.from_pretrained(folder), folder).logits
    model = peft_model(folder)
    base = model.unload()
    np.testing.assert_array_equal(forward(base, folder).logits, base_logits)


# ---- get_peft_model: PEFT's arguments ------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_get_peft_model_resolves_targets_as_peft(case, lora_data, tmp_path):
    """PEFT's LoraConfig arguments of each fixture: the same adapter tensors (keys, shapes) and the same
    resolved adapter_config.json as PEFT's (Transformers-4 expert names become target_parameters with
    rank and alpha doubled on gate_up_proj)."""
    folder = lora_data / case
    peft = json.loads((folder / "adapter_keys.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(folder)
    model = get_peft_model(base, LoraConfig(**FIXTURE_LORA, **PEFT_ARGUMENTS[case]))
    assert isinstance(model, PeftModel) and model.get_base_model() is base
    model.save_pretrained(tmp_path / "adapter")
    assert tensor_shapes(tmp_path / "adapter" / "adapter_model.safetensors") == peft["keys"]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    want = peft["adapter_config"]
    for key in ("r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "init_lora_weights"):
        assert config[key] == want[key], key
    assert sorted(config["target_modules"]) == sorted(want["target_modules"])
    assert sorted(config["target_parameters"] or []) == sorted(want["target_parameters"] or [])
    assert config["base_model_name_or_path"] == str(folder)
    resolved = model.peft_config["default"]
    assert isinstance(resolved, LoraConfig) and sorted(resolved.target_modules) == sorted(want["target_modules"])


def test_fresh_adapters_start_at_the_base_model_and_count_as_peft(lora_data, capsys):
    folder = lora_data / "lora_attn_experts"
    base_out = forward(AutoModelForCausalLM.from_pretrained(folder), folder)
    base = AutoModelForCausalLM.from_pretrained(folder)
    total_before = base.num_parameters()
    model = get_peft_model(base, LoraConfig(r=3, target_modules=ATTN, target_parameters=EXPERTS))
    # init_lora_weights=True (PEFT's default): B is zero, so the adapted model is the base model.
    np.testing.assert_allclose(forward(model, folder).logits, base_out.logits, rtol=0, atol=1e-6)

    cfg = model.config
    hidden, heads, kv, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    experts, inter, r = cfg.get("num_experts", cfg.get("num_local_experts")), cfg["moe_intermediate_size"], 3
    per_layer = (r * (hidden + heads * hd) * 2 + r * (hidden + kv * hd) * 2  # q, o; k, v
                 + experts * r * (hidden + 2 * inter) + experts * r * (inter + hidden))  # gate_up, down
    adapters = cfg["num_hidden_layers"] * per_layer
    assert model.get_nb_trainable_parameters() == (adapters, total_before + adapters)
    assert model.num_parameters(only_trainable=True) == adapters
    model.print_trainable_parameters()
    assert capsys.readouterr().out == (f"trainable params: {adapters:,d} || all params: {total_before + adapters:,d} || "
                                       f"trainable%: {100 * adapters / (total_before + adapters):.4f}\n")


def test_target_that_matches_nothing_is_named(lora_data, tmp_path):
    folder = lora_data / "lora_attn"
    model = AutoModelForCausalLM.from_pretrained(folder)
    with pytest.raises(ValueError, match="'v_prj'"):
        get_peft_model(model, LoraConfig(target_modules=["q_proj", "v_prj"]))
    with pytest.raises(ValueError, match="mlp.experts.gate_up"):
        get_peft_model(model, LoraConfig(target_modules=["q_proj"], target_parameters=["mlp.experts.gate_up"]))
    # The model is untouched: no adapter, and save_pretrained still writes the model.
    assert model._adapter is None
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "config.json").exists()


@pytest.mark.parametrize("arguments, message", [
    (dict(target_modules=["q_proj"], use_dora=True), "use_dora"),
    (dict(target_modules=["q_proj"], bias="all"), "bias"),
    (dict(target_modules=["q_proj"], modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(target_modules=["q_proj"], layers_to_transform=[0]), "layers_to_transform"),
    (dict(target_modules=r".*\.q_proj"), "regular expression"),
    (dict(target_modules=["gate_proj"]), "up_proj"),  # half of the fused expert projection
    (dict(), "target_modules"),  # PEFT has no default targets for qwen3_moe
])
def test_unsupported_options_are_refused_by_name(arguments, message, lora_data):
    model = AutoModelForCausalLM.from_pretrained(lora_data / "lora_attn")
    with pytest.raises(ValueError, match=message):
        get_peft_model(model, LoraConfig(**arguments))
    assert model._adapter is None


@pytest.mark.parametrize("arguments, message", [
    (dict(r=0), "r must be"), (dict(lora_alpha=float("nan")), "lora_alpha"), (dict(lora_dropout=1.0), "lora_dropout"),
    (dict(bias="some"), "bias"), (dict(init_lora_weights="gaussian"), "init_lora_weights"),
    (dict(task_type="SEQ_CLS"), "CAUSAL_LM"), (dict(target_modules=[1, 2]), "target_modules"),
])
def test_lora_config_checks_its_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig(**arguments)


def test_lora_config_takes_peft_spellings(tmp_path):
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules={"v_proj", "q_proj"},
                        task_type=moeforge.TaskType.CAUSAL_LM)
    assert config.target_modules == ["q_proj", "v_proj"] and config.task_type == "CAUSAL_LM"
    assert config.peft_type == "LORA" and config.to_dict()["r"] == 16
    config.save_pretrained(tmp_path)
    assert LoraConfig.from_pretrained(tmp_path) == config
    with pytest.raises(TypeError):
        LoraConfig(rank=4)


def test_base_model_name_or_path_as_peft_records_it(lora_data, tmp_path):
    """get_peft_model names the model the adapters are added to (renaming what the config said, with PEFT's
    warning); a loaded adapter keeps the base its folder names, and names this model where it names none."""
    folder = lora_data / "lora_attn"
    with pytest.warns(UserWarning, match="renamed from 'org/other-model'"):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                               LoraConfig(target_modules=ATTN, base_model_name_or_path="org/other-model"))
    model.save_pretrained(tmp_path / "fresh")
    config = json.loads((tmp_path / "fresh" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(folder)
    config["base_model_name_or_path"] = "org/base-model"
    (tmp_path / "fresh" / "adapter_config.json").write_text(json.dumps(config))
    for adapter, want in ((tmp_path / "fresh", "org/base-model"), (folder / "adapter", str(folder))):
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), adapter)
        loaded.save_pretrained(tmp_path / "saved")
        assert json.loads((tmp_path / "saved" / "adapter_config.json").read_text())["base_model_name_or_path"] == want


def test_one_adapter_at_a_time(lora_data):
    folder = lora_data / "lora_attn"
    model = peft_model(folder)
    with pytest.raises(ValueError, match="already has the adapter"):
        model.load_adapter(folder / "adapter", adapter_name="other")
    with pytest.raises(ValueError, match="already a PeftModel"):
        get_peft_model(model, LoraConfig(target_modules=ATTN))
    with pytest.raises(ValueError, match="already has the adapter"):
        get_peft_model(model.get_base_model(), LoraConfig(target_modules=ATTN))


# ---- Transformers' ways in: load_adapter, add_adapter, an adapter folder as the model ----------

def test_load_adapter_on_the_model_as_transformers(lora_data, tmp_path):
    folder = lora_data / "lora_attn_experts"
    expected = load_file(folder / "expected.safetensors")
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.load_adapter(folder / "adapter")
    assert model.active_adapters() == ["default"] and model.peft_config["default"].r == 3
    assert rel_l2(real_token_logits(forward(model, folder).logits, folder),
                  real_token_logits(expected["logits"], folder)) <= 1e-4
    # Loaded frozen, as Transformers and PEFT load adapters by default.
    assert model.num_parameters(only_trainable=True) == 0
    model.save_pretrained(tmp_path / "adapter")  # the adapter folder, as Transformers saves it
    assert tensor_shapes(tmp_path / "adapter" / "adapter_model.safetensors") == \
        json.loads((folder / "adapter_keys.json").read_text())["keys"]


def test_adapter_folder_loads_as_a_model(lora_data, tmp_path):
    """An adapter saved from moeforge names its base model: AutoModelForCausalLM and
    AutoPeftModelForCausalLM load the base with the adapter, as Transformers and PEFT do."""
    folder = lora_data / "lora_attn"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                           LoraConfig(target_modules=ATTN, r=2, init_lora_weights=False))
    want = forward(model, folder).logits
    model.save_pretrained(tmp_path / "adapter")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "adapter")
    assert type(plain) is moeforge.PreTrainedModel and plain.active_adapters() == ["default"]
    wrapped = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
    assert isinstance(wrapped, PeftModel) and wrapped.active_adapters == ["default"]
    for loaded in (plain, wrapped):
        np.testing.assert_array_equal(forward(loaded, folder).logits, want)
    # PEFT's own fixture names no base model.
    with pytest.raises(ValueError, match="base_model_name_or_path"):
        AutoPeftModelForCausalLM.from_pretrained(folder / "adapter")


def test_adapter_file_that_does_not_fit_is_refused(lora_data, tmp_path):
    """An adapter for other targets than its config says: the missing key is named and the model is left
    without adapter."""
    folder = lora_data / "lora_attn"
    shutil.copytree(folder / "adapter", tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["target_parameters"] = EXPERTS
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    model = AutoModelForCausalLM.from_pretrained(folder)
    with pytest.raises(ValueError, match="missing adapter tensor .*mlp.experts"):
        PeftModel.from_pretrained(model, tmp_path / "adapter")
    assert model._adapter is None
    np.testing.assert_array_equal(forward(model, folder).logits,
                                  forward(AutoModelForCausalLM.from_pretrained(folder), folder).logits)


def test_adapters_on_a_model_without_folder_keep_its_weights(lora_data):
    """A model whose weights are in no folder (random from_config, or changed in memory): adding and
    merging adapters carries its weights over."""
    folder = lora_data / "lora_attn_experts"
    model = AutoModelForCausalLM.from_config(folder, seed=3)
    base = forward(model, folder)
    peft = get_peft_model(model, LoraConfig(target_modules=ATTN, target_parameters=EXPERTS, init_lora_weights=False))
    adapted = forward(peft, folder)
    assert rel_l2(adapted.logits, base.logits) > 1e-3
    merged = peft.merge_and_unload()
    assert rel_l2(forward(merged, folder).logits, adapted.logits) <= 1e-5


# ---- training ------------------------------------------------------------------------------

CYCLE = [17, 42, 99, 150, 201, 260]


def cycle_examples(n, offset=0):
    """Pre-tokenized sequences of a cycle of six tokens at every phase: what adapters learn in a few
    steps. The tiny model's frozen head bounds how low the loss can go (its logits span about 1.6, so
    about 4.1 nats), not the adapters."""
    return [{"input_ids": [CYCLE[(i + t) % len(CYCLE)] for t in range(24)]} for i in range(offset, offset + n)]


def lora_training_args(output_dir, **overrides):
    args = dict(output_dir=str(output_dir), max_steps=30, per_device_train_batch_size=4, max_seq_length=48,
                learning_rate=2e-2, logging_steps=10, save_steps=0, warmup_steps=2, report_to="none")
    args.update(overrides)
    return TrainingArguments(**args)


def test_trainer_with_peft_config_trains_the_adapters_only(tiny_model, tmp_path, capsys):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    trainer = Trainer(model=model, args=lora_training_args(tmp_path / "out"), train_dataset=cycle_examples(64),
                      eval_dataset=cycle_examples(8, offset=3),
                      peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=ATTN, target_parameters=EXPERTS))
    assert isinstance(trainer.model, PeftModel) and trainer.model.get_base_model() is model
    trainer.model.print_trainable_parameters()
    assert capsys.readouterr().out.startswith("trainable params: ")
    before = trainer.evaluate()["eval_loss"]
    result = trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert result.global_step == 30
    assert after < 0.85 * before, (before, after)  # measured: 5.56 -> 4.2

    # The adapters moved (B started at zero) ...
    ids = np.array([cycle_examples(1)[0]["input_ids"]])
    trained_logits = trainer.model(input_ids=ids).logits
    trainer.model.save_pretrained(tmp_path / "adapter")
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert all(np.abs(v).max() > 0 for k, v in adapter.items() if "lora_B" in k)
    # ... and the base weights did not: unloading the adapters gives the folder's model back, bit for bit.
    base = trainer.model.unload()
    base.save_pretrained(tmp_path / "base")
    trained_base, original = load_file(tmp_path / "base" / "model.safetensors"), load_file(tiny_model / "model.safetensors")
    assert set(trained_base) == set(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(trained_base[name], tensor, err_msg=name)

    # The saved adapter on the folder's model is the trained model.
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "adapter")
    assert rel_l2(reloaded(input_ids=ids).logits, trained_logits) <= 1e-6


def test_trainer_trains_a_peft_model_loaded_trainable(tiny_model, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    get_peft_model(base, LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False)).save_pretrained(
        tmp_path / "start")
    frozen = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "start")
    with pytest.raises(ValueError, match="is_trainable=True"):
        Trainer(model=frozen, args=lora_training_args(tmp_path / "out"), train_dataset=cycle_examples(16))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "start",
                                      is_trainable=True)
    assert model.num_parameters(only_trainable=True) > 0
    trainer = Trainer(model=model, args=lora_training_args(tmp_path / "out", max_steps=3),
                      train_dataset=cycle_examples(16))
    trainer.train()
    model.save_pretrained(tmp_path / "end")
    start, end = load_file(tmp_path / "start" / "adapter_model.safetensors"), load_file(
        tmp_path / "end" / "adapter_model.safetensors")
    assert set(start) == set(end) and any(rel_l2(end[k], start[k]) > 1e-4 for k in start)


def test_trainer_refuses_a_model_rebuilt_after_it_was_made(tiny_model, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    trainer = Trainer(model=model, args=lora_training_args(tmp_path / "out", max_steps=2),
                      train_dataset=cycle_examples(16))
    get_peft_model(model, LoraConfig(target_modules=ATTN))
    with pytest.raises(ValueError, match="make a new trainer"):
        trainer.train()


def test_trainer_peft_config_on_a_model_with_adapter_is_refused(tiny_model, tmp_path):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(target_modules=ATTN))
    with pytest.raises(ValueError, match="already holds the adapter"):
        Trainer(model=model, args=lora_training_args(tmp_path / "out"), train_dataset=cycle_examples(16),
                peft_config=LoraConfig(target_modules=ATTN))


def test_trainer_save_model_writes_the_adapter_folder(tiny_model, tmp_path):
    """As Transformers' Trainer saves a PeftModel: the adapter folder with the tokenizer, not a model folder."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    trainer = Trainer(model=model, args=lora_training_args(tmp_path / "out", max_steps=2),
                      train_dataset=cycle_examples(16), peft_config=LoraConfig(target_modules=ATTN))
    trainer.train()
    trainer.save_model(tmp_path / "final")
    assert set(os.listdir(tmp_path / "final")) == {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                                                   "tokenizer_config.json"}
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")  # names its base model
    ids = np.array([cycle_examples(1)[0]["input_ids"]])
    np.testing.assert_allclose(reloaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits, rtol=0, atol=1e-6)


def test_trainer_save_model_puts_a_named_adapter_in_its_subfolder(tiny_model, tmp_path):
    """As PeftModel.save_pretrained (which Transformers' Trainer calls): output_dir/<name> for an adapter not
    named "default"."""
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(target_modules=ATTN)).save_pretrained(
        tmp_path / "start")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "start",
                                      adapter_name="mine", is_trainable=True)
    trainer = Trainer(model=model, args=lora_training_args(tmp_path / "out", max_steps=1),
                      train_dataset=cycle_examples(8))
    trainer.train()
    trainer.save_model()
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(tmp_path / "out" / "mine"))
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()

def test_trainer_checkpoints_are_adapter_folders_and_resume_exactly(tiny_model, tmp_path):
    """save_steps under LoRA: each checkpoint is a PEFT adapter folder (with the tokenizer files and the
    adapters' optimizer state) that PeftModel loads, and a run resumed from one ends with the adapter,
    bit for bit, of a run that was never stopped."""
    def run(out, max_steps, **overrides):
        trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_model),
                          args=lora_training_args(out, max_steps=max_steps, save_steps=2, **overrides),
                          train_dataset=cycle_examples(32),
                          peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=ATTN, target_parameters=EXPERTS))
        trainer.train()
        return trainer

    run(tmp_path / "straight", 4)
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    files = set(os.listdir(checkpoint))
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json",
            "tokenizer.json", "tokenizer_config.json"} <= files, files
    assert not files & {"model.safetensors", "model.safetensors.index.json", "config.json"}, files
    assert all(".lora_" in name for name in load_file(checkpoint / "optimizer.safetensors"))
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model) and config["r"] == 4
    assert PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), checkpoint).active_adapters == \
        ["default"]

    run(tmp_path / "stopped", 2)
    run(tmp_path / "stopped", 4, resume_from_checkpoint="latest")
    for name in ("adapter_model.safetensors", "optimizer.safetensors"):
        assert (tmp_path / "stopped" / "checkpoint-4" / name).read_bytes() == \
            (tmp_path / "straight" / "checkpoint-4" / name).read_bytes(), name


def test_lora_dropout_applies_in_training_only(tiny_model, tmp_path):
    """lora_dropout drops the attention adapters' input in the training passes, as PEFT's lora.Linear in
    train mode, and not in evaluation; adapter_config.json records it."""
    def trainer(dropout):
        # init_lora_weights=False: B is not zero, so the adapters' output (and its dropout) shows in the loss.
        config = LoraConfig(r=4, target_modules=ATTN, lora_dropout=dropout, init_lora_weights=False)
        return Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_model),
                       args=lora_training_args(tmp_path / str(dropout), max_steps=1, logging_steps=1),
                       train_dataset=cycle_examples(16), eval_dataset=cycle_examples(4, offset=1), peft_config=config)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # implemented: nothing to warn about
        plain, dropped = trainer(0.0), trainer(0.3)
    assert dropped.evaluate()["eval_loss"] == plain.evaluate()["eval_loss"]  # the same adapters, no dropout
    assert dropped.train().training_loss != plain.train().training_loss
    dropped.save_model(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["lora_dropout"] == 0.3
