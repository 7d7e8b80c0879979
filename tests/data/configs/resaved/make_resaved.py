#!/usr/bin/env python3
"""Writes resaved/<name>/config.json: each bundled hub config.json loaded and saved again by
Transformers (AutoConfig.from_pretrained + save_pretrained), i.e. the Transformers 5.x spelling
(num_local_experts, rope_parameters, dtype, layers_block_type, ...). Runs in the project venv
(no torch needed):  .venv/bin/python tests/data/configs/resaved/make_resaved.py
"""
import os
import sys

from transformers import AutoConfig

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
for name in sorted(os.listdir(root)):
    source = os.path.join(root, name)
    # The real hub configs only (the tiny-* ones are written by hand in one spelling or the other).
    if name.startswith("tiny-") or not os.path.isfile(os.path.join(source, "config.json")):
        continue
    AutoConfig.from_pretrained(source, trust_remote_code=False).save_pretrained(os.path.join(here, name))
    print("wrote", os.path.join("resaved", name, "config.json"), file=sys.stderr)
