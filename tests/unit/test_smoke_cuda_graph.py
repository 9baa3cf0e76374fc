"""CUDA graph smoke test: speed-up arithmetic, output comparison, and the CPU (skipped) path."""

import json

import pytest

from smoke_tests import cuda_graph


def test_speedup():
    assert cuda_graph.speedup(1215.95, 287.06) == pytest.approx(4.2358, abs=1e-3)
    with pytest.raises(ValueError):
        cuda_graph.speedup(1.0, 0.0)


def test_compare_outputs_flags_unwritten_and_different_values():
    torch = pytest.importorskip("torch")
    want = torch.randn(4, 8)
    assert cuda_graph.compare_outputs(torch, want.clone(), want, 1e-6, 1e-6) == {
        "bitwise_equal": True, "max_abs_diff": 0.0, "ok": True, "nan": 0,
    }  # fmt: skip
    poisoned = want.clone()
    poisoned[0, 0] = float("nan")
    check = cuda_graph.compare_outputs(torch, poisoned, want, 1e-6, 1e-6)
    assert (check["ok"], check["nan"]) == (False, 1)
    off = want + 1e-3
    check = cuda_graph.compare_outputs(torch, off, want, 1e-6, 1e-6)
    assert not check["ok"] and not check["bitwise_equal"]
    assert check["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)


def test_model_keeps_its_shape():
    torch = pytest.importorskip("torch")
    model = cuda_graph.build_model(torch, hidden=32, layers=2, heads=4).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 5, 32)).shape == (2, 5, 32)


def test_cpu_run_exercises_eager_and_reports_skipped(tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "r.json"
    code = cuda_graph.main(["--cpu", "--json", str(path), "--hidden", "64", "--layers", "2", "--seq", "8"])
    assert code == 0
    data = json.loads(path.read_text())
    assert data["status"] == "skipped"
    assert "CUDA graphs need a GPU" in data["reason"]
    assert data["figures"]["cpu_eager_repeatable"] is True
    assert "eager (cpu)" in capsys.readouterr().out


def test_hidden_must_split_into_heads():
    with pytest.raises(SystemExit):
        cuda_graph.main(["--hidden", "30", "--heads", "4"])
