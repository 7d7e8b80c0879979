"""load_dataset for local JSON Lines files, under the datasets library's name and arguments:

    train = load_dataset("json", data_files="chats.jsonl", split="train[8:]")   # was: from datasets import

gives the rows as a list of dicts, which Trainer and SFTTrainer take, so a TRL script runs without
the datasets library. Only the "json" builder on local files; split "train", optionally sliced as
"train[:8]", "train[8:]" or "train[2:10]" (row indices, as datasets slices).
"""
import json
import os
import re

_SPLIT = re.compile(r"train(?:\[(-?\d*):(-?\d*)\])?")


def load_dataset(path, data_files=None, split=None):
    if path != "json":
        raise ValueError(f"load_dataset({path!r}): moeforge reads local JSON Lines files only, "
                         "load_dataset('json', data_files=...)")
    if data_files is None:
        raise ValueError("load_dataset('json'): give data_files (a path or a list of paths)")
    files = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
    rows = []
    for file in files:
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{os.fspath(file)}:{number}: invalid JSON ({e.msg})") from None
    if split is None:
        return {"train": rows}
    match = _SPLIT.fullmatch(split)
    if match is None:
        raise ValueError(f"load_dataset: split {split!r}: expected 'train' or a slice such as 'train[:8]'")
    start, stop = (int(v) if v else None for v in match.groups(default=""))
    return rows[start:stop]
