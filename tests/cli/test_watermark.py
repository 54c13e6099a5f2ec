"""`fedseal keygen | watermark | verify | recover | bench watermark`: exit codes and outputs."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from common.cli import main
from common.run.modelio import load_state


@pytest.fixture()
def files(tmp_path):
    key = tmp_path / "wm.key"
    assert main(["keygen", "--out", str(key)]) == 0
    rng = np.random.default_rng(0)
    model = {
        "fc1.weight": rng.normal(0, 0.1, (64, 30)).astype(np.float32),
        "fc1.bias": rng.normal(0, 0.1, 64).astype(np.float32),
        "fc2.weight": rng.normal(0, 0.1, (2, 64)).astype(np.float32),
        "fc2.bias": np.zeros(2, np.float32),
    }
    plain = tmp_path / "model.safetensors"
    save_file(model, str(plain))
    marked = tmp_path / "marked.safetensors"
    assert main(["watermark", str(plain), "-o", str(marked), "--key", str(key), "--context", "run/1"]) == 0
    return tmp_path, key, plain, marked


def run_json(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_keygen_writes_0600_and_refuses_to_overwrite(files, capsys):
    tmp, key, _, _ = files
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and key.stat().st_size == 32
    capsys.readouterr()
    assert main(["keygen", "--out", str(key)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_verify_intact_then_tampered_then_recovered(files, capsys):
    tmp, key, _, marked = files
    code, report = run_json(capsys, ["verify", str(marked), "--key", str(key), "--context", "run/1", "--json"])
    assert code == 0 and report["intact"] and report["tampered_blocks"] == 0
    for field in ("intact", "total_blocks", "tampered_blocks", "recoverable", "tensors", "problems"):
        assert field in report
    state, metadata = load_state(marked)
    state["fc1.weight"].reshape(-1).view(np.uint32)[100] ^= np.uint32(1 << 29)
    tampered = tmp / "tampered.safetensors"
    save_file(state, str(tampered), metadata=metadata)
    code, report = run_json(capsys, ["verify", str(tampered), "--key", str(key), "--context", "run/1", "--json"])
    assert code == 1 and not report["intact"] and report["recoverable"]
    assert report["tensors"] == {"fc1.weight": {"tampered_blocks": [1], "tampered_ranges": [[64, 128]]}}
    restored = tmp / "restored.safetensors"
    code, report = run_json(
        capsys, ["recover", str(tampered), "-o", str(restored), "--key", str(key), "--context", "run/1", "--json"]
    )
    assert code == 0 and report["intact"] and report["restored_blocks"] == 1
    # bit-exact tensors and the same metadata (safetensors orders metadata keys at random)
    (got, got_meta), (want, want_meta) = load_state(restored), load_state(marked)
    assert got_meta == want_meta and got.keys() == want.keys()
    assert all(got[n].tobytes() == want[n].tobytes() for n in want)


def test_wrong_context_fails(files, capsys):
    _, key, _, marked = files
    code, report = run_json(capsys, ["verify", str(marked), "--key", str(key), "--context", "run/2", "--json"])
    assert code == 1 and report["tampered_blocks"] == report["total_blocks"]


def test_reads_pytorch_state_dicts(files, capsys, tmp_path):
    _, key, _, _ = files
    net = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    torch.save(net.state_dict(), tmp_path / "net.pt")
    out = tmp_path / "net.safetensors"
    assert main(["watermark", str(tmp_path / "net.pt"), "-o", str(out), "--key", str(key)]) == 0
    assert main(["verify", str(out), "--key", str(key)]) == 0


@pytest.mark.parametrize(
    "problem",
    ["truncated", "missing-input", "missing-key", "group-readable-key", "short-key", "output-exists"],
)
def test_bad_input_exits_2_with_one_line(files, capsys, problem):
    tmp, key, plain, marked = files
    target = marked
    if problem == "truncated":
        target = tmp / "cut.safetensors"
        target.write_bytes(marked.read_bytes()[:500])
    elif problem == "missing-input":
        target = tmp / "nope.safetensors"
    elif problem == "missing-key":
        key = tmp / "nokey"
    elif problem == "group-readable-key":
        key.chmod(0o640)
    elif problem == "short-key":
        key = tmp / "short.key"
        key.write_bytes(b"x" * 16)
        key.chmod(0o600)
    capsys.readouterr()
    if problem == "output-exists":
        code = main(["watermark", str(plain), "-o", str(marked), "--key", str(key)])
    else:
        code = main(["verify", str(target), "--key", str(key)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedseal: error:") and "Traceback" not in captured.err


def test_refuses_a_model_without_float32_capacity(tmp_path, files, capsys):
    _, key, _, _ = files
    path = tmp_path / "ints.safetensors"
    save_file({"a": np.arange(10, dtype=np.int64)}, str(path))
    capsys.readouterr()
    assert main(["watermark", str(path), "-o", str(tmp_path / "o.safetensors"), "--key", str(key)]) == 2
    assert "no float32" in capsys.readouterr().err


def test_bench_watermark_prints_every_figure(capsys):
    code, result = run_json(capsys, ["bench", "watermark", "--params", "200000", "--runs", "1", "--json"])
    assert code == 0
    for field in ("params", "embed_s", "verify_s", "recover_10pct_s", "copy_s", "hash_s", "recovery_curve"):
        assert field in result
    assert [f for f, _ in result["recovery_curve"]] == [0.05, 0.10, 0.15, 0.20, 0.25, 0.30]
    assert dict(result["recovery_curve"])[0.05] == 1.0


def test_an_untouched_batchnorm_model_verifies_intact_after_watermark(tmp_path, files, capsys):
    """A 0-dim tensor (BatchNorm's int64 num_batches_tracked) keeps its shape [] through
    watermark -> file -> verify: it was written as [1] and every such model failed its check."""
    from tests.anymodels import batchnorm_mlp

    _, key, _, _ = files
    torch.save(batchnorm_mlp().state_dict(), tmp_path / "bn.pt")
    out = tmp_path / "bn.safetensors"
    assert main(["watermark", str(tmp_path / "bn.pt"), "-o", str(out), "--key", str(key)]) == 0
    state, _ = load_state(out)
    assert state["net.1.num_batches_tracked"].shape == () and state["net.1.num_batches_tracked"].dtype == np.int64
    assert state["scale"].shape == () and state["enabled"].dtype == np.bool_
    code, report = run_json(capsys, ["verify", str(out), "--key", str(key), "--json"])
    assert code == 0 and report["intact"] and report["problems"] == []
