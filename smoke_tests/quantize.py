"""Quantization smoke test: llm-compressor quantizes a tiny model, the result is reloaded,
compared with the original, and scored by lm-eval, all offline.

    python -m smoke_tests.quantize [--json quantize.json]
    python -m smoke_tests.quantize --cpu      # everything on the CPU (what CI runs)

Two recipes, as the tutorial's notes use them, on a random-weight Qwen2 (hidden 256,
intermediate 512: the group size 128 of W4A16 divides every Linear):

- ``FP8_DYNAMIC`` (``QuantizationModifier``, no calibration data): FP8 weights with one
  scale per output channel, activations quantized per token at run time;
- ``W4A16`` by GPTQ (``GPTQModifier``) on generated calibration samples: 4-bit weights
  packed into int32, one scale per group of 128.

Each is saved as compressed-tensors (``save_compressed=True``) and checked as a user
relies on it: the checkpoint's ``quantization_config`` names the scheme; the Linear
weights in the safetensors really are FP8, or packed int32 with scales and shapes; the
Linear weights take fewer bytes than the original's (at most ``--max-size-ratio`` of
them); the reloaded model (transformers' compressed-tensors loader) gives logits within
``--fp8-tolerance`` / ``--w4-tolerance`` (relative L2 error) of the original on fresh
prompts, and its greedy next tokens agree with the original's mostly. lm-eval then scores
the original and both quantized models on a small multiple-choice task written here
(sums; the data are local files, nothing is downloaded): every model gets a score from the
same number of questions. On a GPU the FP8 checkpoint's weights also go through FP8
tensor-core matrix products (``torch._scaled_mm``, per-token activation scales, as vLLM
and SGLang run compressed-tensors FP8), checked against the dequantized product.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from smoke_tests._result import Fail, Report, SmokeTest, fmt, gpu_unavailable, no_gpu, run_main, test_parser

TEST = "quantize"

#: The recipes: name -> (compressed-tensors format the config must name, weight tensors a
#: quantized Linear must have, their dtypes as safetensors spells them).
SCHEMES: dict[str, dict[str, Any]] = {
    "fp8_dynamic": {"format": "float-quantized", "tensors": {"weight": "F8_E4M3", "weight_scale": None}},
    "w4a16_gptq": {"format": "pack-quantized", "tensors": {"weight_packed": "I32", "weight_scale": None, "weight_shape": None}},
}


def key_figure(figures: Mapping[str, Any]) -> str:
    models = figures.get("models") or {}
    parts = []
    for name in ("fp8_dynamic", "w4a16_gptq"):
        got = models.get(name) or {}
        if "relative_error" in got:
            parts.append(f"{name.split('_')[0].upper()} err {got['relative_error']:.3f}, {got.get('size_ratio', 0):.2f}x size")
    if isinstance(figures.get("fp8_gemm"), dict) and "relative_error" in figures["fp8_gemm"]:
        parts.append(f"FP8 GEMM ran (err {figures['fp8_gemm']['relative_error']:.3f})")
    return "; ".join(parts) or "-"


SMOKE = SmokeTest(TEST, timeout=900, key_figure=key_figure)


# ---------------------------------------------------------------------------- pure logic


def relative_error(got: Sequence[float], want: Sequence[float]) -> float:
    """||got - want|| / ||want|| (L2 over all elements)."""
    num = sum((g - w) ** 2 for g, w in zip(got, want, strict=True))
    den = sum(w * w for w in want)
    return float((num / den) ** 0.5) if den else float("inf")


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file: tensor name -> {dtype, shape, data_offsets}."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 0 < size < 100 * 2**20:
            raise ValueError(f"{path.name}: not a safetensors file (header of {size} bytes)")
        header: dict[str, Any] = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def checkpoint_tensors(folder: Path) -> dict[str, dict[str, Any]]:
    tensors: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(safetensors_header(path))
    if not tensors:
        raise Fail(f"{folder.name}: no .safetensors file was written")
    return tensors


def tensor_bytes(info: Mapping[str, Any]) -> int:
    start, end = info["data_offsets"]
    return int(end) - int(start)


def linear_weight_bytes(tensors: Mapping[str, Mapping[str, Any]], linear_prefixes: Iterable[str]) -> int:
    """Bytes of every tensor that belongs to one of the Linear layers (weight, scales...)."""
    prefixes = tuple(p + "." for p in linear_prefixes)
    return sum(tensor_bytes(info) for name, info in tensors.items() if name.startswith(prefixes) and not name.endswith(".bias"))


def check_quantized_checkpoint(folder: Path, scheme: str, linear_prefixes: Sequence[str], original_bytes: int, max_size_ratio: float) -> dict[str, Any]:
    """The checkpoint is what the scheme promises: its config, every Linear's tensors and
    their dtypes, and fewer bytes than the original Linear weights. Raises Fail otherwise."""
    want = SCHEMES[scheme]
    config = json.loads((folder / "config.json").read_text())
    qconfig = config.get("quantization_config") or config.get("compression_config")
    if not isinstance(qconfig, dict):
        raise Fail(f"{scheme}: config.json has no quantization_config (not saved as compressed-tensors)")
    if qconfig.get("format") != want["format"] or qconfig.get("quant_method") != "compressed-tensors":
        raise Fail(f"{scheme}: config.json says {qconfig.get('quant_method')}/{qconfig.get('format')}, expected compressed-tensors/{want['format']}")
    tensors = checkpoint_tensors(folder)
    missing = []
    for prefix in linear_prefixes:
        for suffix, dtype in want["tensors"].items():
            info = tensors.get(f"{prefix}.{suffix}")
            if info is None:
                missing.append(f"{prefix}.{suffix}")
            elif dtype and info["dtype"] != dtype:
                raise Fail(f"{scheme}: {prefix}.{suffix} is {info['dtype']}, expected {dtype}: the weights were not quantized")
    if missing:
        raise Fail(f"{scheme}: {len(missing)} quantized tensors missing, e.g. {missing[0]}")
    size = linear_weight_bytes(tensors, linear_prefixes)
    ratio = size / original_bytes
    if ratio > max_size_ratio:
        raise Fail(f"{scheme}: Linear weights take {ratio:.2f}x the original's bytes (limit {max_size_ratio:g})")
    return {"format": qconfig["format"], "linear_bytes": size, "size_ratio": ratio, "quantized_linears": len(linear_prefixes)}


def sums_task(rows: int, seed: int) -> list[dict[str, Any]]:
    """Multiple-choice questions about sums: the right total and three near misses."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        a, b = rng.randrange(100), rng.randrange(100)
        wrong = sorted({a + b + d for d in (-10, -1, 1, 10)} - {a + b})[:3]
        choices = [str(a + b), *map(str, wrong)]
        rng.shuffle(choices)
        out.append({"question": f"What is {a} + {b}?", "choices": choices, "answer": choices.index(str(a + b))})
    return out


def write_lm_eval_task(folder: Path, rows: Sequence[Mapping[str, Any]]) -> str:
    """An lm-eval task reading local JSON lines (no hub); returns its name."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "kit_sums.yaml").write_text(
        "task: kit_sums\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}} Answer:"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n"
    )
    return "kit_sums"


# ---------------------------------------------------------------------------- the work


def prompts_batch(tokenizer: Any, n: int, seed: int) -> Any:
    from smoke_tests.tiny_model import make_conversations, render_chatml

    texts = [render_chatml(c) for c in make_conversations(n, seed)]
    return tokenizer(texts, return_tensors="pt", padding=True)


def logits_of(model: Any, batch: Any, device: str) -> Any:
    import torch

    with torch.no_grad():
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    mask = batch["attention_mask"].to(device).bool()
    return out.logits[mask].float().cpu()


def compare_logits(got: Any, want: Any) -> dict[str, Any]:
    import torch

    err = float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want))
    agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    return {"relative_error": err, "top1_agreement": agree, "positions": int(want.shape[0])}


def quantize(model_dir: Path, out: Path, scheme: str, calibration: Any, args: argparse.Namespace) -> float:
    """Quantize the model in ``model_dir`` with one recipe and save it compressed to ``out``."""
    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if scheme == "fp8_dynamic":
        oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"]))
    else:
        oneshot(
            model=model,
            dataset=calibration,
            recipe=GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]),
            max_seq_length=args.max_seq_length,
            num_calibration_samples=len(calibration),
        )
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    return time.monotonic() - start


def calibration_set(tokenizer: Any, rows: int, seed: int) -> Any:
    from datasets import Dataset

    from smoke_tests.tiny_model import make_conversations, render_chatml

    texts = [render_chatml(c) for c in make_conversations(rows, seed)]
    encoded = tokenizer(texts)
    return Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})


def lm_eval_scores(models: Mapping[str, Path], task_dir: Path, device: str, limit: int) -> dict[str, dict[str, Any]]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir))
    scores = {}
    for name, path in models.items():
        start = time.monotonic()
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={path},dtype=bfloat16",
            tasks=["kit_sums"],
            task_manager=manager,
            device=device,
            batch_size=16,
            limit=limit,
        )
        if not results or "kit_sums" not in results.get("results", {}):
            raise Fail(f"lm-eval returned no score for {name}")
        row = results["results"]["kit_sums"]
        acc = row.get("acc,none")
        samples = results.get("n-samples", {}).get("kit_sums", {}).get("effective")
        if not isinstance(acc, int | float) or not 0.0 <= acc <= 1.0:
            raise Fail(f"lm-eval's accuracy for {name} is {acc!r}, not a score")
        scores[name] = {"acc": float(acc), "samples": samples, "seconds": time.monotonic() - start}
    counts = {s["samples"] for s in scores.values()}
    if len(counts) != 1 or None in counts:
        raise Fail(f"lm-eval scored the models on different numbers of questions: {counts}")
    return scores


def fp8_gemm_check(folder: Path, prefixes: Sequence[str]) -> dict[str, Any]:
    """Each FP8 Linear of the checkpoint through an FP8 tensor-core product (torch._scaled_mm
    with per-token activation scales and the checkpoint's per-channel weight scales),
    against the same product done in float32 on the dequantized operands."""
    import torch
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path, device="cuda"))
    torch.manual_seed(0)
    worst, ran = 0.0, 0
    fp8 = torch.float8_e4m3fn
    for prefix in prefixes:
        w = tensors[f"{prefix}.weight"]
        w_scale = tensors[f"{prefix}.weight_scale"].float().reshape(1, -1)  # one per output channel
        x = torch.randn(64, w.shape[1], device="cuda", dtype=torch.bfloat16)
        x_scale = (x.abs().amax(dim=1, keepdim=True).float() / torch.finfo(fp8).max).clamp(min=1e-12)
        x_q = (x.float() / x_scale).clamp(torch.finfo(fp8).min, torch.finfo(fp8).max).to(fp8)
        got = torch._scaled_mm(x_q, w.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=torch.bfloat16)
        want = (x_q.float() * x_scale) @ (w.float() * w_scale.t()).t()
        err = float(torch.linalg.vector_norm(got.float() - want) / torch.linalg.vector_norm(want))
        worst, ran = max(worst, err), ran + 1
    torch.cuda.synchronize()
    if worst > 0.02:
        raise Fail(f"FP8 tensor-core products differ from the dequantized ones by {worst:.3g} (relative)")
    return {"linears": ran, "relative_error": worst}


def body_for(args: argparse.Namespace) -> Any:
    def body(report: Report) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from smoke_tests import tiny_model

        use_gpu = not args.cpu and torch.cuda.is_available()
        device = "cuda" if use_gpu else "cpu"
        if not use_gpu and not args.cpu and args.require_gpu:
            raise no_gpu(True, "quantized kernels need a GPU")
        if use_gpu:
            report.figures["gpu"] = torch.cuda.get_device_name(0)
        report.figures["versions"] = {d: _version(d) for d in ("llmcompressor", "compressed-tensors", "lm-eval", "transformers", "torch")}
        work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="smoke-quantize-"))
        try:
            info = tiny_model.build(work, rows=args.rows, seed=args.seed, cfg=tiny_model.SERVE_CONFIG)
            model_dir = Path(info["model"])
            report.figures["model"] = {k: info[k] for k in ("hidden_size", "layers", "vocab_size", "dtype")}
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            original = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
            linear = [n for n, m in original.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
            original_tensors = checkpoint_tensors(model_dir)
            original_bytes = linear_weight_bytes(original_tensors, linear)
            batch = prompts_batch(tokenizer, args.prompts, args.seed + 7)
            want = logits_of(original, batch, device)
            del original
            calibration = calibration_set(tokenizer, args.calibration_samples, args.seed + 3)

            models: dict[str, Any] = {}
            report.figures["models"] = models
            rows: list[list[str]] = []
            report.table_headers = ["model", "format", "Linear bytes", "quantize", "logits rel. error", "top-1 agree"]
            report.table_rows = rows
            rows.append(["original (bf16)", "dense", f"{original_bytes}", "-", "-", "-"])
            tolerances = {"fp8_dynamic": args.fp8_tolerance, "w4a16_gptq": args.w4_tolerance}
            for scheme in SCHEMES:
                out = work / scheme
                seconds = quantize(model_dir, out, scheme, calibration, args)
                figures = check_quantized_checkpoint(out, scheme, linear, original_bytes, args.max_size_ratio)
                reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).to(device).eval()
                figures |= compare_logits(logits_of(reloaded, batch, device), want)
                figures["quantize_seconds"] = seconds
                del reloaded
                models[scheme] = figures
                rows.append([scheme, figures["format"], str(figures["linear_bytes"]), f"{seconds:.1f} s",
                             fmt(figures["relative_error"], 4), fmt(figures["top1_agreement"], 3)])  # fmt: skip
                if figures["relative_error"] > tolerances[scheme]:
                    err, limit = figures["relative_error"], tolerances[scheme]
                    raise Fail(f"{scheme}: reloaded logits are {err:.3g} from the original's (relative; tolerance {limit:g})")
                if figures["top1_agreement"] < args.min_top1:
                    agree = figures["top1_agreement"]
                    raise Fail(f"{scheme}: greedy next tokens agree with the original's at {agree:.0%} of positions (minimum {args.min_top1:.0%})")
                report.verdict(f"{scheme} logits", True, f"{figures['relative_error']:.3g} relative, top-1 {figures['top1_agreement']:.0%}",
                               f"<= {tolerances[scheme]:g}, top-1 >= {args.min_top1:.0%}")  # fmt: skip

            task_dir = work / "lm_eval_tasks"
            write_lm_eval_task(task_dir, sums_task(args.eval_rows, args.seed + 11))
            report.figures["lm_eval"] = lm_eval_scores({"original": model_dir, **{s: work / s for s in SCHEMES}}, task_dir, device, args.eval_rows)

            if use_gpu:
                report.figures["fp8_gemm"] = fp8_gemm_check(work / "fp8_dynamic", linear)
        finally:
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)

        if not use_gpu:
            what = "FP8 tensor-core products need a GPU (quantized, saved, reloaded, compared and scored by lm-eval on the CPU)"
            raise gpu_unavailable(args, what)

    return body


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(argv: Iterable[str] | None = None) -> int:
    parser = test_parser(__doc__, timeout=SMOKE.timeout)
    parser.add_argument("--rows", type=int, default=64, help="conversations the tokenizer is trained on")
    parser.add_argument("--prompts", type=int, default=16, help="prompts whose logits are compared")
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--eval-rows", type=int, default=40, help="lm-eval questions per model")
    parser.add_argument("--fp8-tolerance", type=float, default=0.15, help="relative L2 error of FP8 logits (0.072 measured on the CPU)")
    parser.add_argument("--w4-tolerance", type=float, default=0.15, help="relative L2 error of W4A16 logits (0.025 measured on the CPU)")
    parser.add_argument("--min-top1", type=float, default=0.5, help="share of positions whose greedy token must agree")
    parser.add_argument("--max-size-ratio", type=float, default=0.6, help="quantized Linear bytes / original's")
    parser.add_argument("--workdir", default="", help="keep the models here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    return run_main(TEST, parser, argv, body_for, offline=True)


if __name__ == "__main__":
    sys.exit(main())
