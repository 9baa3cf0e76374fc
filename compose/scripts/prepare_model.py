"""Decide which model the SGLang services load and make it available; run before them.

KIT_MODEL names a Hugging Face model (found in the mounted HF cache) or is `tiny` (the
default): then a small random-weight Qwen2 with its tokenizer is written under /models
from a configuration (smoke_tests/tiny_model.py), with no hub access. The chosen path or
model id is written to /models/model_path, which the servers read.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MODELS = Path(os.environ.get("KIT_MODELS_DIR", "/models"))


def main() -> int:
    name = os.environ.get("KIT_MODEL", "tiny") or "tiny"
    MODELS.mkdir(parents=True, exist_ok=True)
    if name != "tiny":
        print(f"model: {name} (from the Hugging Face cache, HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')})")
        (MODELS / "model_path").write_text(name + "\n")
        return 0
    target = MODELS / "tiny"
    if not (target / "model" / "config.json").exists():
        from smoke_tests.tiny_model import TinyConfig, build

        # head_dim 64 (256 / 4): the attention kernels SGLang picks on GPUs support it;
        # the smoke tests' default (16) is too small for some of them.
        cfg = TinyConfig(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
        info = build(target, rows=64, seed=0, cfg=cfg)
        print(f"model: tiny random-weight Qwen2 written to {info['model']} (vocab {info['vocab_size']})")
    else:
        print(f"model: tiny, already at {target / 'model'}")
    (MODELS / "model_path").write_text(str(target / "model") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
