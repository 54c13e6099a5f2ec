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


# --- verdicts, and the signature of a published model ------------------------------------------


def test_verify_tells_wrong_key_and_unmarked_file_from_tampering(files, capsys):
    tmp, key, plain, marked = files
    other = tmp / "other.key"
    assert main(["keygen", "--out", str(other)]) == 0
    cases = {"intact": (marked, key, 0), "wrong-key": (marked, other, 1), "never-marked": (plain, key, 1)}
    verdicts = {}
    for name, (path, k, want) in cases.items():
        code, report = run_json(capsys, ["verify", str(path), "--key", str(k), "--context", "run/1", "--json"])
        assert code == want
        verdicts[name] = report["verdict"]
    assert verdicts == {"intact": "intact", "wrong-key": "not-watermarked-under-this-key",
                        "never-marked": "not-watermarked-under-this-key"}
    capsys.readouterr()
    assert main(["verify", str(plain), "--key", str(key), "--context", "run/1"]) == 1
    out = capsys.readouterr().out
    assert "NOT WATERMARKED under this key and context" in out and "TAMPERED" not in out
    restored = tmp / "restored.safetensors"
    assert main(["recover", str(plain), "-o", str(restored), "--key", str(key)]) == 1
    assert not restored.exists()  # nothing to restore from: no output that looks restored


def test_verify_tampered_names_tensor_blocks_ranges_and_recoverability(files, capsys):
    tmp, key, _, marked = files
    state, metadata = load_state(marked)
    state["fc2.weight"].reshape(-1).view(np.uint32)[5] ^= np.uint32(1 << 30)
    tampered = tmp / "tampered.safetensors"
    save_file(state, str(tampered), metadata=metadata)
    capsys.readouterr()
    assert main(["verify", str(tampered), "--key", str(key), "--context", "run/1"]) == 1
    out = capsys.readouterr().out
    assert "verify: TAMPERED: 1 of" in out and "fc2.weight: 1 blocks, parameters [0:64)" in out
    assert "recoverable: yes (run `fedseal recover`)" in out


@pytest.fixture()
def published(tmp_path):
    """A model as a FedSeal run publishes it: watermarked, signed, context in its metadata."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from common.integrity.keys import write_private
    from common.integrity.seal import global_context, publish_global
    from common.run.records import published_metadata, save_arrays

    wm_key = bytes(range(32))
    key_file = tmp_path / "watermark.key"
    write_private(key_file, wm_key)
    rng = np.random.default_rng(3)
    model = {"w": rng.normal(0, 0.1, (40, 64)).astype(np.float32), "b": rng.normal(0, 0.1, 64).astype(np.float32)}
    pubs = {}
    for who in ("server", "other"):
        signing = Ed25519PrivateKey.generate()
        pubs[who] = tmp_path / f"{who}-signing.pub"
        write_private(pubs[who], signing.public_key().public_bytes(serialization.Encoding.PEM,
                                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
        arrays, signature = publish_global(model, wm_key, signing, "run-7", 3)
        save_arrays(tmp_path / f"by-{who}.safetensors", arrays,
                    published_metadata(arrays, global_context("run-7", 3), signature))
    return tmp_path, key_file, pubs


def test_signing_pub_valid_signature(published, capsys):
    tmp, key, pubs = published
    code, report = run_json(capsys, ["verify", str(tmp / "by-server.safetensors"), "--key", str(key),
                                     "--signing-pub", str(pubs["server"]), "--json"])
    assert code == 0 and report["verdict"] == "intact"
    sig = report["signature"]
    assert sig["valid"] and sig["bytes_match"] and sig["run"] == "run-7" and sig["round"] == 3
    assert sig["signer"].startswith("SHA256:")
    capsys.readouterr()
    assert main(["verify", str(tmp / "by-server.safetensors"), "--key", str(key), "--signing-pub", str(pubs["server"])]) == 0
    assert "signature: valid: key SHA256:" in capsys.readouterr().out


def test_signing_pub_signature_by_another_key(published, capsys):
    tmp, key, pubs = published
    code, report = run_json(capsys, ["verify", str(tmp / "by-other.safetensors"), "--key", str(key),
                                     "--signing-pub", str(pubs["server"]), "--json"])
    assert code == 1 and report["verdict"] == "intact"  # a key holder re-watermarked it: only the signature tells
    assert not report["signature"]["valid"] and "not signed by this server key" in report["signature"]["reason"]


def test_signing_pub_model_changed_after_signing(published, capsys):
    tmp, key, pubs = published
    state, metadata = load_state(tmp / "by-server.safetensors")
    state["w"].reshape(-1).view(np.uint32)[70] ^= np.uint32(1 << 28)
    changed = tmp / "changed.safetensors"
    save_file(state, str(changed), metadata=metadata)
    code, report = run_json(capsys, ["verify", str(changed), "--key", str(key), "--signing-pub", str(pubs["server"]),
                                     "--json"])
    assert code == 1 and report["verdict"] == "tampered"
    sig = report["signature"]
    assert not sig["valid"] and not sig["bytes_match"] and sig["signed_after_recovery"]
    assert "changed after signing" in sig["reason"]
    state["w"][:] = 0.5  # beyond recovery, and with it beyond the signature
    save_file(state, str(changed), metadata=metadata)
    code, report = run_json(capsys, ["verify", str(changed), "--key", str(key), "--signing-pub", str(pubs["server"]),
                                     "--json"])
    assert code == 1 and not report["signature"]["valid"] and not report["signature"]["signed_after_recovery"]


def test_signing_pub_on_a_file_without_signature(files, capsys, published):
    tmp, key, _, marked = files
    _, _, pubs = published
    code, report = run_json(capsys, ["verify", str(marked), "--key", str(key), "--context", "run/1",
                                     "--signing-pub", str(pubs["server"]), "--json"])
    assert code == 1 and report["verdict"] == "intact" and "no server signature" in report["signature"]["reason"]
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
