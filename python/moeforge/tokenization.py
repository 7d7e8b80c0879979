"""AutoTokenizer: tokenizer.json, special tokens and chat template of a model folder, with the calls of
Transformers' tokenizers (`__call__`, encode, decode, batch_decode, apply_chat_template)."""
import json
import os
import shutil

import numpy as np

from ._native import native


class BatchEncoding(dict):
    """A dict of `input_ids`, `attention_mask`, ... whose keys also read as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _padding_strategy(padding):
    if padding is False or padding is None or padding == "do_not_pad":
        return None
    if padding is True or padding == "longest":
        return "longest"
    if padding == "max_length":
        return "max_length"
    raise ValueError(f"padding={padding!r}: expected True, False, 'longest', 'max_length' or 'do_not_pad'")


def _check_return_tensors(return_tensors):
    if return_tensors not in (None, "np", "pt"):
        raise ValueError(f"return_tensors={return_tensors!r}: moeforge returns NumPy arrays ('np'), torch tensors "
                         "('pt') or lists (None)")
    if return_tensors == "pt":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise ValueError("return_tensors='pt' needs PyTorch installed; use 'np' for NumPy arrays") from None


def _ids_list(token_ids, name="token_ids"):
    if isinstance(token_ids, (int, np.integer)):
        return [int(token_ids)]
    array = np.asarray(token_ids)
    if array.ndim == 1 and array.size == 0:
        return []
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be a sequence of ints, got {type(token_ids).__name__}")
    return array.astype(np.int32).tolist()


class PreTrainedTokenizer:
    def __init__(self, native_tokenizer):
        self._tok = native_tokenizer
        self.name_or_path = native_tokenizer.folder
        self.padding_side = native_tokenizer.padding_side
        self.model_max_length = native_tokenizer.model_max_length
        self._chat_template = None  # set by the caller; else the folder's

    # Special tokens, as named in tokenizer_config.json.
    eos_token = property(lambda self: self._tok.eos_token)
    pad_token = property(lambda self: self._tok.pad_token)
    bos_token = property(lambda self: self._tok.bos_token)
    eos_token_id = property(lambda self: self._token_id(self.eos_token))
    pad_token_id = property(lambda self: self._token_id(self.pad_token))
    bos_token_id = property(lambda self: self._token_id(self.bos_token))

    @property
    def chat_template(self):
        """The Jinja source: the one set here, else the folder's (chat_template.jinja or
        tokenizer_config.json's chat_template), else None."""
        if self._chat_template is not None:
            return self._chat_template
        folder = self.name_or_path
        jinja = os.path.join(folder, "chat_template.jinja")
        if os.path.exists(jinja):
            with open(jinja, encoding="utf-8") as f:
                return f.read()
        config = os.path.join(folder, "tokenizer_config.json")
        if os.path.exists(config):
            with open(config, encoding="utf-8") as f:
                return json.load(f).get("chat_template")
        return None

    @chat_template.setter
    def chat_template(self, source):
        """As Transformers: `tokenizer.chat_template = source` (e.g. a training variant with
        {% generation %} blocks, so multi-turn chats train on every assistant turn). Set it before
        building the Trainer, which encodes its datasets with it."""
        if not isinstance(source, str):
            raise TypeError(f"chat_template must be a str (Jinja source), got {type(source).__name__}")
        self._tok.set_chat_template(source)
        self._chat_template = source

    def _token_id(self, token):
        return None if token is None else self._tok.token_to_id(token)

    def __len__(self):
        return self._tok.vocab_size

    @property
    def vocab_size(self):
        return self._tok.vocab_size

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self._tok.token_to_id(tokens)
        return [self._tok.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, (int, np.integer)):
            return self._tok.id_to_token(int(ids))
        return [self._tok.id_to_token(int(i)) for i in ids]

    # ---- encoding
    def encode(self, text, add_special_tokens=True, truncation=False, max_length=None, return_tensors=None):
        encoded = self(text, add_special_tokens=add_special_tokens, truncation=truncation, max_length=max_length,
                       return_tensors=return_tensors)
        return encoded["input_ids"]

    def __call__(self, text=None, add_special_tokens=True, padding=False, truncation=None, max_length=None,
                 return_tensors=None, return_attention_mask=True, **kwargs):
        if kwargs:
            raise TypeError(f"__call__() got an unexpected keyword argument {next(iter(kwargs))!r}")
        if text is None:
            raise ValueError("text is required")
        batched = not isinstance(text, str)
        texts = list(text) if batched else [text]
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("text must be a str or a list of str")
        strategy = _padding_strategy(padding)
        _check_return_tensors(return_tensors)
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        limit = max_length if max_length is not None else self.model_max_length
        ids = self._tok.encode_batch(texts, add_special_tokens)
        if truncation not in (None, False, "do_not_truncate"):
            if truncation not in (True, "longest_first", "only_first"):
                raise ValueError(f"truncation={truncation!r}: expected True, False, 'longest_first' or 'only_first'")
            if limit is None:
                raise ValueError("truncation needs max_length (this tokenizer has no model_max_length)")
            ids = [row[:limit] for row in ids]
        masks = [[1] * len(row) for row in ids]
        if strategy is not None:
            width = max(map(len, ids), default=0)
            if strategy == "max_length":
                if max_length is None:
                    raise ValueError("padding='max_length' needs max_length")
                width = max_length
            ids, masks = self._pad(ids, masks, width)
        if return_tensors in ("np", "pt"):
            if len({len(row) for row in ids}) > 1:
                raise ValueError(f"return_tensors={return_tensors!r} needs rows of one length: pass padding=True")
            ids = np.array(ids, dtype=np.int64).reshape(len(ids), -1)
            masks = np.array(masks, dtype=np.int64).reshape(len(masks), -1)
            if return_tensors == "pt":
                import torch

                ids, masks = torch.from_numpy(ids), torch.from_numpy(masks)
        elif not batched:
            ids, masks = ids[0], masks[0]
        out = BatchEncoding(input_ids=ids)
        if return_attention_mask:
            out["attention_mask"] = masks
        return out

    def _pad(self, ids, masks, width):
        pad_id = self.pad_token_id
        if pad_id is None:
            raise ValueError("Asking to pad but the tokenizer does not have a padding token "
                             "(no pad_token in tokenizer_config.json)")
        padded_ids, padded_masks = [], []
        for row, mask in zip(ids, masks):
            fill = max(0, width - len(row))
            if self.padding_side == "left":
                padded_ids.append([pad_id] * fill + row)
                padded_masks.append([0] * fill + mask)
            else:
                padded_ids.append(row + [pad_id] * fill)
                padded_masks.append(mask + [0] * fill)
        return padded_ids, padded_masks

    # ---- decoding
    def decode(self, token_ids, skip_special_tokens=False, **kwargs):
        if kwargs.keys() - {"clean_up_tokenization_spaces"}:
            raise TypeError(f"decode() got an unexpected keyword argument {next(iter(kwargs))!r}")
        return self._tok.decode(_ids_list(token_ids), bool(skip_special_tokens))

    def batch_decode(self, sequences, skip_special_tokens=False, **kwargs):
        return [self.decode(row, skip_special_tokens=skip_special_tokens, **kwargs) for row in sequences]

    # ---- chat
    def apply_chat_template(self, conversation, tools=None, add_generation_prompt=False, tokenize=True,
                            padding=False, truncation=False, max_length=None, return_tensors=None, return_dict=True,
                            return_assistant_tokens_mask=False, **template_kwargs):
        """As Transformers 5.x: the rendered text (tokenize=False), or its ids encoded without added
        special tokens; with return_dict (the default), a BatchEncoding with input_ids,
        attention_mask and, when asked, assistant_masks (the {% generation %} spans). Extra keyword
        arguments are template variables (enable_thinking=False, ...)."""
        batched = len(conversation) > 0 and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        for c in conversations:
            if not all(isinstance(m, dict) for m in c):
                raise TypeError("conversation must be a list of {'role': ..., 'content': ...} dicts")
        tools_json = json.dumps(tools)
        variables_json = json.dumps(template_kwargs)
        if not tokenize:
            texts = [self._tok.apply_chat_template(json.dumps(c), bool(add_generation_prompt), tools_json,
                                                   variables_json) for c in conversations]
            return texts if batched else texts[0]
        _check_return_tensors(return_tensors)
        rows, assistant = [], []
        for c in conversations:
            ids, mask = self._tok.apply_chat_template_ids(json.dumps(c), bool(add_generation_prompt), tools_json,
                                                          variables_json)
            if truncation and max_length is not None:
                ids, mask = ids[:max_length], mask[:max_length]
            rows.append(ids)
            assistant.append(mask)
        masks = [[1] * len(r) for r in rows]
        strategy = _padding_strategy(padding)
        if strategy is not None:
            width = max_length if strategy == "max_length" and max_length else max(map(len, rows))
            assistant = [a + [0] * (width - len(a)) if self.padding_side == "right" else [0] * (width - len(a)) + a
                         for a in assistant]
            rows, masks = self._pad(rows, masks, width)
        if return_tensors in ("np", "pt"):
            rows = np.array(rows, dtype=np.int64)
            masks = np.array(masks, dtype=np.int64)
            assistant = np.array(assistant, dtype=np.int64)
            if return_tensors == "pt":
                import torch

                rows, masks, assistant = torch.from_numpy(rows), torch.from_numpy(masks), torch.from_numpy(assistant)
        elif not batched:
            rows, masks, assistant = rows[0], masks[0], assistant[0]
        if not return_dict:
            if return_assistant_tokens_mask:
                raise ValueError("return_assistant_tokens_mask=True needs return_dict=True")
            return rows
        out = BatchEncoding(input_ids=rows, attention_mask=masks)
        if return_assistant_tokens_mask:
            out["assistant_masks"] = assistant
        return out


    # What a tokenizer folder holds, as Transformers writes it (the chat template in chat_template.jinja).
    _FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
              "chat_template.jinja")

    def save_pretrained(self, save_directory, push_to_hub=False, **kwargs):
        """The tokenizer files of the folder it was loaded from, copied to `save_directory`; a
        chat_template set on this tokenizer is written to chat_template.jinja (which readers take
        before tokenizer_config.json's). Returns the paths written, as Transformers."""
        unknown = set(kwargs) - {"legacy_format", "filename_prefix", "safe_serialization"}
        if unknown:
            raise TypeError(f"save_pretrained() got an unexpected keyword argument {unknown.pop()!r}")
        if push_to_hub:
            raise ValueError("push_to_hub=True: moeforge does not upload; save, then 'hf upload REPO FOLDER'")
        folder = os.fspath(save_directory)
        if os.path.isfile(folder):
            raise ValueError(f"save_pretrained: {folder} is a file, not a folder")
        os.makedirs(folder, exist_ok=True)
        written = []
        for name in self._FILES:
            source = os.path.join(self.name_or_path, name)
            if name == "chat_template.jinja" and self._chat_template is not None:
                with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                    f.write(self._chat_template)
            elif os.path.isfile(source) and not os.path.samefile(self.name_or_path, folder):
                shutil.copyfile(source, os.path.join(folder, name))
            elif not os.path.isfile(source):
                continue
            written.append(os.path.join(folder, name))
        return tuple(written)


class AutoTokenizer:
    def __init__(self):
        raise EnvironmentError("AutoTokenizer is a factory: use AutoTokenizer.from_pretrained(...)")

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path, **kwargs):
        """A folder holding tokenizer.json (and tokenizer_config.json), or a model id in the local cache."""
        unknown = kwargs.keys() - {"use_fast", "trust_remote_code"}
        if unknown:
            raise TypeError(f"from_pretrained() got an unexpected keyword argument {unknown.pop()!r}")
        if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            raise TypeError("pretrained_model_name_or_path must be a path or a model id")
        return PreTrainedTokenizer(native.tokenizer_from_pretrained(os.fspath(pretrained_model_name_or_path)))
