"""The tiny model, tokenizer and dataset that the verl SFT smoke test trains on."""

import json

import pytest

from smoke_tests import tiny_model


def test_conversations_are_deterministic_and_correct():
    first = tiny_model.make_conversations(8, seed=3)
    assert first == tiny_model.make_conversations(8, seed=3)
    assert first != tiny_model.make_conversations(8, seed=4)
    for user, assistant in first:
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        a, b = (int(x) for x in user["content"].removeprefix("What is ").removesuffix("?").split(" + "))
        assert assistant["content"] == f"{a} + {b} = {a + b}."


def test_render_chatml():
    text = tiny_model.render_chatml([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    for name in ("torch", "transformers", "tokenizers", "pandas", "pyarrow"):
        pytest.importorskip(name)
    root = tmp_path_factory.mktemp("tiny")
    return root, tiny_model.build(root, rows=32, seed=0)


def test_build_writes_model_tokenizer_and_data(built):
    root, info = built
    model = root / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (model / name).is_file(), name
    config = json.loads((model / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["vocab_size"] == info["vocab_size"]
    assert json.loads((root / "tiny_model.json").read_text()) == info
    assert 0 < info["max_tokens"] < 64


def test_dataset_is_a_messages_column(built):
    import pandas as pd

    root, info = built
    frame = pd.read_parquet(info["train_files"])
    assert list(frame.columns) == ["messages"]
    assert len(frame) == 32
    assert [m["role"] for m in frame["messages"][0]] == ["user", "assistant"]


def test_tokenizer_round_trips_and_template_matches_chatml(built):
    from transformers import AutoTokenizer

    _, info = built
    tok = AutoTokenizer.from_pretrained(info["model"])
    conv = tiny_model.make_conversations(1, seed=9)[0]
    text = tok.apply_chat_template(conv, tokenize=False)
    assert text == tiny_model.render_chatml(conv)
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.decode(tok("unseen words: Zürich 42")["input_ids"]) == "unseen words: Zürich 42"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert max(ids) < info["vocab_size"]


def test_turn_by_turn_tokens_equal_whole_conversation(built):
    """verl's MultiTurnSFTDataset tokenizes each turn alone and checks the concatenation."""
    from transformers import AutoTokenizer

    _, info = built
    tok = AutoTokenizer.from_pretrained(info["model"])
    conv = tiny_model.make_conversations(1, seed=5)[0]

    def ids(messages):
        return tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]

    assert ids(conv[:1]) + ids(conv[1:]) == ids(conv)


def test_model_loads_and_scores(built):
    import torch
    from transformers import AutoModelForCausalLM

    _, info = built
    model = AutoModelForCausalLM.from_pretrained(info["model"])
    with torch.no_grad():
        out = model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3, info["vocab_size"])
    assert torch.isfinite(out.loss)
