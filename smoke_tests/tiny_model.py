"""A tiny random-weight Qwen2 model, its tokenizer and a small SFT dataset, made offline.

    python -m smoke_tests.tiny_model OUTDIR [--rows 64] [--seed 0]

writes ``OUTDIR/model`` (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json with a ChatML chat template) and ``OUTDIR/train.parquet`` (one
``messages`` column of user/assistant turns), with no access to any model hub. The
tokenizer is a byte-level BPE trained here with the ``tokenizers`` library on the
dataset's own text, so any string encodes. The conversations are sums of two numbers
("What is 12 + 30?" / "12 + 30 = 42."): regular enough that a few optimizer steps
visibly lower the loss of a randomly initialised model.

``--preset serve`` gives the shape inference engines (SGLang) need: heads of 64, a context of
32768 (longer than any prefill chunk) and bfloat16 weights (``SERVE_CONFIG`` says why);
``--rl-rows N`` also writes ``OUTDIR/rl.parquet``, prompts in verl's RL layout
(``data_source``, ``prompt`` messages, ``reward_model.ground_truth``, ``extra_info``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAD, EOS, IM_START = "<|endoftext|>", "<|im_end|>", "<|im_start|>"
SPECIAL_TOKENS = [PAD, IM_START, EOS]

#: ChatML with no default system prompt. Each turn renders on its own exactly as inside a
#: whole conversation, which verl's MultiTurnSFTDataset checks (it tokenizes turn by turn).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: The pre-tokenizer pattern of Qwen2's tokenizer.json.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class TinyConfig:
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    vocab_size: int = 512  # the most the tokenizer may learn; the dataset's text gives fewer
    dtype: str = "float32"  # the weights as saved (config.json's dtype)


#: For inference engines (SGLang, and verl's SGLang rollout), shaped as real checkpoints are:
#: - head_dim 64 (256 / 4 heads), which the attention kernels they pick on GPUs support;
#: - a context of 32768 (Qwen2.5's), longer than any prefill chunk. SGLang 0.5.12 captures
#:   its piecewise CUDA graphs by running one request of up to --chunked-prefill-size
#:   tokens (8192 on an H200) and never caps that at the model's context: with 512
#:   positions the attention's page table (one row of context + 4 slots per request) is
#:   read past its end and the capture dies in cuBLAS (CUBLAS_STATUS_EXECUTION_FAILED).
#:   Rotary embeddings hold no weights, so a long context costs nothing;
#: - bfloat16 weights, as published models ship (float32 ones are served as float16).
SERVE_CONFIG = TinyConfig(
    hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=32768, dtype="bfloat16",
)  # fmt: skip
PRESETS = {"sft": TinyConfig(), "serve": SERVE_CONFIG}


def make_conversations(rows: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``rows`` single-turn chats about sums, the same for the same seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        a, b = rng.randrange(100), rng.randrange(100)
        out.append([
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"{a} + {b} = {a + b}."},
        ])  # fmt: skip
    return out


def render_chatml(messages: Sequence[dict[str, str]]) -> str:
    """What CHAT_TEMPLATE renders, in Python (the tokenizer's training text and a test oracle)."""
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{EOS}\n" for m in messages)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # Qwen2's own split (digits one by one), then bytes: transformers' Qwen2Tokenizer applies
    # this split when it loads the files, so training with it keeps both views identical.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def write_tokenizer(tok: Any, out: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(out)
    return hf


def write_model(out: Path, cfg: TinyConfig, vocab_size: int, eos_id: int, pad_id: int, seed: int) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=False,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    model = Qwen2ForCausalLM(config).to(getattr(torch, cfg.dtype))
    model.save_pretrained(out, safe_serialization=True)
    return out


def write_dataset(path: Path, conversations: Sequence[Sequence[dict[str, str]]]) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"messages": [list(c) for c in conversations]}).to_parquet(path, index=False)
    return path


#: The RL prompts' data_source: no verl scorer knows it, so a run names its reward function.
RL_DATA_SOURCE = "smoke/sums"


def make_rl_rows(rows: int, seed: int = 1) -> list[dict[str, Any]]:
    """``rows`` prompts in verl's RL dataset layout (RLHFDataset reads ``prompt`` as chat
    messages; the reward manager passes ``reward_model.ground_truth`` to the scorer)."""
    out = []
    for i, chat in enumerate(make_conversations(rows, seed)):
        question, answer = chat[0]["content"], chat[1]["content"]
        out.append({
            "data_source": RL_DATA_SOURCE,
            "prompt": [{"role": "user", "content": question}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": answer.split("= ")[1].rstrip(".")},
            "extra_info": {"split": "train", "index": i},
        })  # fmt: skip
    return out


def write_rl_dataset(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(list(rows)).to_parquet(path, index=False)
    return path


def build(workdir: str | Path, rows: int = 64, seed: int = 0, cfg: TinyConfig | None = None, rl_rows: int = 0) -> dict[str, Any]:
    """Write model, tokenizer and dataset (and with ``rl_rows`` an RL prompt set) under
    ``workdir``; return their paths and sizes."""
    cfg = cfg or TinyConfig()
    root = Path(workdir)
    model_dir = root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    conversations = make_conversations(rows, seed)
    tok = train_tokenizer((render_chatml(c) for c in conversations), cfg.vocab_size)
    hf = write_tokenizer(tok, model_dir)
    vocab = len(hf)
    write_model(model_dir, cfg, vocab, hf.convert_tokens_to_ids(EOS), hf.convert_tokens_to_ids(PAD), seed)
    data = write_dataset(root / "train.parquet", conversations)
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(model_dir)  # what the trainer will see
    lengths = [len(loaded.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]) for c in conversations]
    info = {
        "model": str(model_dir),
        "train_files": str(data),
        "rows": rows,
        "vocab_size": vocab,
        "max_tokens": max(lengths),
        "hidden_size": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "context": cfg.max_position_embeddings,
        "dtype": cfg.dtype,
    }
    if rl_rows:
        rl = make_rl_rows(rl_rows, seed + 1)
        info["rl_files"] = str(write_rl_dataset(root / "rl.parquet", rl))
        info["rl_rows"] = rl_rows
        info["max_prompt_tokens"] = max(
            len(loaded.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]) for r in rl
        )
    (root / "tiny_model.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("outdir")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="sft", help="model shape (serve: SGLang's, see SERVE_CONFIG)")
    parser.add_argument("--rl-rows", type=int, default=0, help="also write rl.parquet with this many prompts")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    info = build(args.outdir, rows=args.rows, seed=args.seed, cfg=PRESETS[args.preset], rl_rows=args.rl_rows)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
