"""LoRA under Hugging Face PEFT's names: LoraConfig, get_peft_model, PeftModel, AutoPeftModelForCausalLM.

    from moeforge import AutoModelForCausalLM, LoraConfig, get_peft_model   # was: from peft import ...
    config = LoraConfig(r=16, target_modules=["q_proj", "v_proj"], target_parameters=["mlp.experts.gate_up_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), config)
    model.print_trainable_parameters()
    ...
    model.save_pretrained("adapter")          # adapter_config.json + adapter_model.safetensors, as PEFT writes

The engine builds adapters into the model (src/arch/lora.h), so adding, merging or dropping them
rebuilds the native model in place; every Python object over it (the base model and its PeftModel)
sees the change, as PEFT's in-place injection does. One adapter at a time. Adapter folders are
PEFT's format both ways: moeforge reads PEFT's and PEFT reads moeforge's.
"""
import enum
import json
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional, Union

import numpy as np

from .modeling import AutoModelForCausalLM, PreTrainedModel

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"

# PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING for the families moeforge trains:
# target_modules=None means these (PEFT has no entry for qwen3_moe, qwen2_moe or olmoe either).
_DEFAULT_TARGET_MODULES = {"mixtral": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"],
                           "qwen3": ["q_proj", "v_proj"]}

_seed = [42]  # what the adapters' A (and, without init_lora_weights, B) are drawn from


def set_seed(seed):
    """Seeds what get_peft_model draws the adapters from (Transformers' set_seed seeds torch, which PEFT's
    initialisation draws from). The Trainer draws with TrainingArguments.seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    _seed[0] = int(seed)


class TaskType(str, enum.Enum):
    """PEFT's task types; moeforge's models are causal language models."""

    CAUSAL_LM = "CAUSAL_LM"


def _is_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


@dataclass
class LoraConfig:
    """PEFT's LoraConfig: the same argument names, defaults and meaning. moeforge adapts attention
    projections (q_proj, k_proj, v_proj, o_proj), routed experts (target_parameters
    ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"], or Transformers-4 names gate_proj/up_proj/
    down_proj, which PEFT rewrites to them) and the router (target_parameters ["mlp.gate.weight"]);
    target_modules="all-linear" is all of them on MoE families, as in PEFT. lora_dropout drops the
    input of target_modules adapters in training; on target_parameters (experts, router) it is refused,
    as PEFT's ParamWrapper refuses it. Options PEFT has and moeforge does not implement (DoRA, biases,
    modules_to_save, layers_to_transform, ...) are refused by name when get_peft_model applies the
    config."""

    r: int = 8
    target_modules: Optional[Union[List[str], str]] = None
    exclude_modules: Optional[Union[List[str], str]] = None
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    bias: str = "none"
    use_rslora: bool = False
    modules_to_save: Optional[List[str]] = None
    init_lora_weights: bool = True
    layers_to_transform: Optional[Union[List[int], int]] = None
    layers_pattern: Optional[Union[List[str], str]] = None
    rank_pattern: Optional[Dict[str, int]] = field(default_factory=dict)
    alpha_pattern: Optional[Dict[str, float]] = field(default_factory=dict)
    use_dora: bool = False
    lora_bias: bool = False
    target_parameters: Optional[List[str]] = None
    trainable_token_indices: Optional[Union[List[int], Dict[str, List[int]]]] = None
    task_type: Optional[Union[str, TaskType]] = None
    inference_mode: bool = False
    base_model_name_or_path: Optional[str] = None
    revision: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)) or self.r <= 0:
            raise ValueError(f"LoraConfig: r must be a positive int, got {self.r!r}")
        self.r = int(self.r)
        if not _is_number(self.lora_alpha) or not np.isfinite(self.lora_alpha) or self.lora_alpha == 0:
            raise ValueError(f"LoraConfig: lora_alpha must be a nonzero number, got {self.lora_alpha!r}")
        if not _is_number(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"LoraConfig: lora_dropout must be a number in [0, 1), got {self.lora_dropout!r}")
        if self.bias not in ("none", "all", "lora_only"):  # PEFT's literal; only "none" is implemented
            raise ValueError(f"LoraConfig: bias must be 'none', 'all' or 'lora_only', got {self.bias!r}")
        if not isinstance(self.init_lora_weights, bool):
            raise ValueError(f"LoraConfig: init_lora_weights={self.init_lora_weights!r} is not supported by moeforge "
                             "(True: A uniform and B zero, PEFT's default; False: both random)")
        self.target_modules = self._names(self.target_modules, "target_modules")
        self.target_parameters = self._names(self.target_parameters, "target_parameters")
        if isinstance(self.target_parameters, str):
            raise ValueError("LoraConfig: target_parameters must be a list of parameter names")
        if self.task_type is not None:
            task = self.task_type.value if isinstance(self.task_type, TaskType) else self.task_type
            if task != TaskType.CAUSAL_LM.value:
                raise ValueError(f"LoraConfig: task_type={task!r}: moeforge trains causal language models "
                                 "('CAUSAL_LM')")
            self.task_type = task
        for name in ("rank_pattern", "alpha_pattern"):
            if getattr(self, name) is None:
                setattr(self, name, {})
            elif not isinstance(getattr(self, name), dict):
                raise ValueError(f"LoraConfig: {name} must be a dict of pattern -> value")

    @staticmethod
    def _names(value, name):
        """A list (or set, tuple) of names as a sorted list, a string as it is (PEFT: "all-linear" or a regex)."""
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
            return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        raise ValueError(f"LoraConfig: {name} must be a list of names or a string, got {value!r}")

    @property
    def peft_type(self):
        return "LORA"

    def to_dict(self):
        d = asdict(self)
        d["peft_type"] = "LORA"
        return d

    def save_pretrained(self, save_directory):
        """adapter_config.json in `save_directory`, as PeftConfig.save_pretrained."""
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, ADAPTER_CONFIG_NAME), "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, **kwargs):
        """The adapter_config.json of an adapter folder; keys of PEFT's other options are left out."""
        folder = os.fspath(pretrained_model_name_or_path)
        if subfolder:
            folder = os.path.join(folder, subfolder)
        path = os.path.join(folder, ADAPTER_CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder}: no {ADAPTER_CONFIG_NAME} (a PEFT adapter folder holds "
                                    f"{ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME})")
        with open(path) as f:
            data = json.load(f)
        return cls._from_json(data, kwargs)

    @classmethod
    def _from_json(cls, data, overrides=None):
        if data.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"peft_type {data.get('peft_type')!r} is not LoRA")
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values.update(overrides or {})
        return cls(**values)

    def _engine_json(self, model):
        """adapter_config.json text for the engine (arch/lora.h reads it), with PEFT's resolution of
        target_modules=None and the model's name as base_model_name_or_path (get_peft_model's)."""
        config = self.to_dict()
        if config["target_modules"] is None:
            model_type = model.config.get("model_type")
            if model_type in _DEFAULT_TARGET_MODULES:
                config["target_modules"] = list(_DEFAULT_TARGET_MODULES[model_type])
            elif not config["target_parameters"]:
                raise ValueError("Please specify `target_modules` or `target_parameters` in `peft_config` (PEFT has no "
                                 f"default targets for model_type {model_type!r})")
        # As PEFT's get_peft_model: the adapters name the model they are added to, whatever the config said.
        name = model.name_or_path or None
        if config["base_model_name_or_path"] not in (None, name):
            warnings.warn(f"The PEFT config's `base_model_name_or_path` was renamed from "
                          f"'{config['base_model_name_or_path']}' to '{name}'. Please ensure that the correct base "
                          "model is loaded when loading this checkpoint.", stacklevel=4)
        config["base_model_name_or_path"] = name
        return json.dumps(config)


class _AdapterState:
    """The adapter a model holds: its name, its config as the engine resolved it, whether it trains."""

    def __init__(self, name, config, trainable):
        self.name, self.config, self.trainable = name, config, trainable


def _check_adapter_name(adapter_name):
    if not isinstance(adapter_name, str) or not adapter_name or os.sep in adapter_name:
        raise ValueError(f"adapter_name must be a non-empty name, got {adapter_name!r}")
    return adapter_name


def _resolved_config(model):
    return LoraConfig._from_json(json.loads(model._model.adapter_config_json()))


def _require_no_adapter(model, what):
    if model._adapter is not None:
        raise ValueError(f"{what}: the model already has the adapter {model._adapter.name!r} (moeforge holds one "
                         "adapter at a time: merge_and_unload() or unload() it first)")


def _add_adapter(model, peft_config, adapter_name, seed):
    """Fresh adapters on `model` (a PreTrainedModel, changed in place)."""
    if not isinstance(peft_config, LoraConfig):
        raise TypeError(f"peft_config must be a moeforge LoraConfig, got {type(peft_config).__name__}")
    _check_adapter_name(adapter_name)
    _require_no_adapter(model, "adding an adapter")
    model._model.add_adapter(peft_config._engine_json(model), seed)
    trainable = not peft_config.inference_mode
    config = _resolved_config(model)
    config.inference_mode = not trainable
    model._adapter = _AdapterState(adapter_name, config, trainable)


def _load_adapter(model, folder, adapter_name, is_trainable):
    """A PEFT adapter folder onto `model` (changed in place)."""
    _check_adapter_name(adapter_name)
    _require_no_adapter(model, "loading an adapter")
    model._model.load_adapter(os.fspath(folder))
    config = _resolved_config(model)
    config.inference_mode = not is_trainable
    model._adapter = _AdapterState(adapter_name, config, bool(is_trainable))


def _save_adapter(model, save_directory):
    if model._adapter is None:
        raise ValueError("the model has no adapter to save")
    model._model.save_adapter(os.fspath(save_directory))


def get_peft_model(model, peft_config, adapter_name="default", mixed=False, autocast_adapter_dtype=True, revision=None,
                   low_cpu_mem_usage=False):
    """PEFT's get_peft_model: `model` with LoRA adapters, its base weights frozen; `model` itself is
    changed in place (as PEFT injects the adapters into it). Adapters are float32 whatever the base
    dtype (PEFT's autocast_adapter_dtype=True). A target that matches nothing raises ValueError naming it."""
    if isinstance(model, PeftModel):
        raise ValueError("get_peft_model: the model is already a PeftModel")
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"model must be a moeforge model (AutoModelForCausalLM.from_pretrained), got "
                        f"{type(model).__name__}")
    if mixed:
        raise ValueError("get_peft_model: mixed adapter types are not supported by moeforge")
    if not autocast_adapter_dtype:
        raise ValueError("get_peft_model: moeforge keeps adapters in float32 (autocast_adapter_dtype=True)")
    _add_adapter(model, peft_config, adapter_name, _seed[0])
    return PeftModel._wrap(model)


class PeftModel(PreTrainedModel):
    """A model with a LoRA adapter, as PEFT's PeftModel(ForCausalLM): forward, generate and training as
    the base model (the adapters included), save_pretrained writes the adapter folder. Made by
    get_peft_model, PeftModel.from_pretrained or AutoPeftModelForCausalLM.from_pretrained."""

    def __init__(self, model, peft_config, adapter_name="default", autocast_adapter_dtype=True,
                 low_cpu_mem_usage=False):
        if not isinstance(model, PreTrainedModel) or isinstance(model, PeftModel):
            raise TypeError(f"model must be a moeforge model without adapters, got {type(model).__name__}")
        if not autocast_adapter_dtype:
            raise ValueError("PeftModel: moeforge keeps adapters in float32 (autocast_adapter_dtype=True)")
        _add_adapter(model, peft_config, adapter_name, _seed[0])
        self._bind(model)

    @classmethod
    def _wrap(cls, model):
        self = cls.__new__(cls)
        self._bind(model)
        return self

    def _bind(self, model):
        # Not PreTrainedModel.__init__: the base model's native model, config and adapter are shared.
        self.__dict__["base_model"] = model
        self._model = model._model
        self.config = model.config

    @property
    def _adapter(self):
        return self.base_model._adapter

    @_adapter.setter
    def _adapter(self, value):
        self.base_model._adapter = value

    def __getattr__(self, name):
        # Attributes the wrapper lacks come from the base model, as in PEFT.
        if name.startswith("__") or "base_model" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["base_model"], name)

    @property
    def active_adapter(self):
        return self._adapter.name if self._adapter is not None else None

    @property
    def active_adapters(self):
        return [self._adapter.name] if self._adapter is not None else []

    def get_base_model(self):
        """The model the adapters were added to (it holds them: the two share one engine model)."""
        return self.base_model

    @classmethod
    def from_pretrained(cls, model, model_id, adapter_name="default", is_trainable=False, config=None,
                        autocast_adapter_dtype=True, low_cpu_mem_usage=False, **kwargs):
        """PEFT's PeftModel.from_pretrained: the adapter folder `model_id` on `model` (changed in place).
        As in PEFT the adapters are frozen unless is_trainable=True. The folder's adapter_config.json is
        the configuration (`config=` is not supported)."""
        if kwargs:
            raise TypeError(f"PeftModel.from_pretrained() got an unexpected keyword argument {next(iter(kwargs))!r}")
        if not isinstance(model, PreTrainedModel) or isinstance(model, PeftModel):
            raise TypeError(f"model must be a moeforge model without adapters, got {type(model).__name__}")
        if config is not None:
            raise ValueError("PeftModel.from_pretrained: config= is not supported; moeforge reads the folder's "
                             "adapter_config.json")
        if not autocast_adapter_dtype:
            raise ValueError("PeftModel.from_pretrained: moeforge keeps adapters in float32")
        _load_adapter(model, model_id, adapter_name, is_trainable)
        return cls._wrap(model)

    def load_adapter(self, model_id, adapter_name="default", is_trainable=False, **kwargs):
        _require_no_adapter(self.base_model, "load_adapter")
        return self.base_model.load_adapter(model_id, adapter_name=adapter_name, is_trainable=is_trainable, **kwargs)

    @property
    def peft_config(self):
        return {self._adapter.name: self._adapter.config} if self._adapter is not None else {}

    def save_pretrained(self, save_directory, safe_serialization=True, selected_adapters=None, is_main_process=True,
                        **kwargs):
        """The adapter folder (adapter_config.json, adapter_model.safetensors) as PEFT writes it: in
        `save_directory` for the adapter "default", else in `save_directory/<adapter name>`."""
        unknown = set(kwargs) - {"save_embedding_layers", "path_initial_model_for_weight_conversion"}
        if unknown:
            raise TypeError(f"save_pretrained() got an unexpected keyword argument {unknown.pop()!r}")
        if safe_serialization is not True:
            raise ValueError("safe_serialization=False: moeforge writes safetensors only")
        if self._adapter is None:
            raise ValueError("save_pretrained: the adapter was merged or unloaded; save the returned base model")
        if selected_adapters is not None and list(selected_adapters) != [self._adapter.name]:
            raise ValueError(f"selected_adapters={selected_adapters!r}: the model holds the adapter "
                             f"{self._adapter.name!r} only")
        if not is_main_process:
            return
        folder = os.fspath(save_directory)
        if self._adapter.name != "default":
            folder = os.path.join(folder, self._adapter.name)
        _save_adapter(self, folder)

    def get_nb_trainable_parameters(self):
        """(trainable parameters, all parameters), as PEFT counts them: the adapters when they train, and
        the base model's parameters plus the adapters'."""
        return self.num_parameters(only_trainable=True), self.num_parameters()

    def print_trainable_parameters(self):
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def merge_and_unload(self, progressbar=False, safe_merge=False, adapter_names=None):
        """The adapters folded into the base weights (W += scale * B A), then removed: returns the base
        model, whose save_pretrained now writes the merged model (Transformers loads it as any model)."""
        self._check_adapter("merge_and_unload", adapter_names)
        self._model.merge_and_unload()
        self._adapter = None
        return self.base_model

    def unload(self):
        """The adapters removed without merging: returns the base model as it was."""
        self._check_adapter("unload", None)
        self._model.unload()
        self._adapter = None
        return self.base_model

    def _check_adapter(self, what, adapter_names):
        if self._adapter is None:
            raise ValueError(f"{what}: the model has no adapter (already merged or unloaded)")
        if adapter_names is not None and list(adapter_names) != [self._adapter.name]:
            raise ValueError(f"{what}: adapter_names={adapter_names!r}: the model holds the adapter "
                             f"{self._adapter.name!r} only")

    def __repr__(self):
        name = self._adapter.name if self._adapter is not None else None
        return f"PeftModel(adapter {name!r} on {self.base_model!r})"


PeftModelForCausalLM = PeftModel


class AutoPeftModelForCausalLM:
    """PEFT's AutoPeftModelForCausalLM.from_pretrained(adapter_folder): the base model named by the
    folder's adapter_config.json (base_model_name_or_path) with the adapter loaded."""

    def __init__(self):
        raise EnvironmentError("AutoPeftModelForCausalLM is a factory: use AutoPeftModelForCausalLM.from_pretrained(...)")

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path, adapter_name="default", is_trainable=False, config=None,
                        **kwargs):
        folder = os.fspath(pretrained_model_name_or_path)
        base = _base_model_path(folder)
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        return PeftModel.from_pretrained(model, folder, adapter_name=adapter_name, is_trainable=is_trainable,
                                         config=config)


def _base_model_path(adapter_folder):
    config = LoraConfig.from_pretrained(adapter_folder)
    if not config.base_model_name_or_path:
        raise ValueError(f"{adapter_folder}: adapter_config.json names no base_model_name_or_path; load the base "
                         "model and use PeftModel.from_pretrained(model, folder)")
    return config.base_model_name_or_path
