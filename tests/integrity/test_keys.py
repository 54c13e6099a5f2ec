"""Tests of common/integrity/keys.py and `fedseal keys init`."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.errors import InputError, KeyFileError, TamperError
from common.integrity import keys

# Fixed vectors: if one of these changes, keys made by an older FedSeal stop matching.
VECTOR_SIGNATURE = (
    "b71cb7fba6636a210980e2bfec9a12b099a0c61163dab1e0bdeb8da274913349"
    "be2c4d6ed4a60ae65ca987b68a3b8ac2d99960a1d6c43986066201d15dfe0a09"
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    root = tmp_path / "keys"
    keys.init_federation(root, 3)
    return root


def _all_secret_bytes(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in root.rglob("*.key") if p.stat().st_size == keys.SECRET_LEN]


# --- layout -----------------------------------------------------------------------------------


def test_layout_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    written = keys.init_federation(root, 3)
    assert written.server == root / "server"
    assert written.clients == tuple(root / "clients" / c for c in ("0", "1", "2"))
    server = root / "server"
    assert sorted(p.relative_to(server).as_posix() for p in server.rglob("*")) == [
        "he-public.ctx", "seals", "seals/0.key", "seals/1.key", "seals/2.key",
        "signing.key", "signing.pub", "watermark.key",
    ]  # fmt: skip
    for cid in "012":
        folder = root / "clients" / cid
        assert sorted(p.name for p in folder.iterdir()) == [
            "he-secret.ctx", "seal.key", "server-signing.pub", "watermark.key",
        ]  # fmt: skip
    for path in [*root.joinpath("server").rglob("*"), *root.joinpath("clients").rglob("*")]:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert _mode(root / "server") == _mode(root / "clients") == 0o700
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp")] == []


def test_layout_modes_survive_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        keys.init_federation(tmp_path, 1)
    finally:
        os.umask(old)
    for path in tmp_path.rglob("*"):
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path


def test_clients_get_only_public_key_and_own_seal_key(fed: Path) -> None:
    server = keys.ServerKeys.load(fed / "server")
    seen = set()
    for cid in "012":
        folder = keys.client_dir(fed, cid)
        client = keys.ClientKeys.load(folder)
        assert client.client_id == cid
        assert client.seal_key == server.seal_key(cid)
        assert client.watermark_key == server.watermark_key
        assert "PRIVATE" not in (folder / "server-signing.pub").read_text()
        assert not (folder / "signing.key").exists()
        others = {server.seal_key(o) for o in "012" if o != cid}
        assert not any(f.read_bytes() in others for f in folder.iterdir())
        seen.add(client.seal_key)
    assert len(seen) == 3 and server.watermark_key not in seen


def test_refuses_to_overwrite(fed: Path) -> None:
    before = (fed / "server" / "watermark.key").read_bytes()
    with pytest.raises(InputError, match=r"server.*not empty"):
        keys.init_federation(fed, 2)
    assert (fed / "server" / "watermark.key").read_bytes() == before
    assert sorted(p.name for p in (fed / "clients").iterdir()) == ["0", "1", "2"]


def test_refuses_when_only_clients_exist(tmp_path: Path) -> None:
    (tmp_path / "clients" / "0").mkdir(parents=True)
    with pytest.raises(InputError, match="clients"):
        keys.init_federation(tmp_path, 1)
    assert not (tmp_path / "server").exists()


def test_empty_existing_folders_are_fine(tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    (tmp_path / "clients").mkdir()
    keys.init_federation(tmp_path, 1)
    keys.ServerKeys.load(tmp_path / "server")


def test_rejects_no_sites(tmp_path: Path) -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(InputError):
            keys.init_federation(tmp_path, bad)
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_nothing(tmp_path: Path) -> None:
    def broken_writer(server_dir: Path, client_dirs: list[Path]) -> None:
        keys.write_private(server_dir / "he-context.bin", b"public context")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        keys.init_federation(tmp_path, 2, he_context_writer=broken_writer)
    assert list(tmp_path.iterdir()) == []
    keys.init_federation(tmp_path, 2)  # and a retry works


def test_failure_between_renames_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(dst)
        if Path(dst).name == "server" and len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(keys.os, "rename", rename)
    with pytest.raises(InputError, match="No space left"):
        keys.init_federation(tmp_path, 2)
    assert list(tmp_path.iterdir()) == []


def test_he_context_writer_files_land_in_place(tmp_path: Path) -> None:
    def writer(server_dir: Path, client_dirs: list[Path]) -> None:
        keys.write_private(server_dir / "he-public.ctx", b"public")
        for folder in client_dirs:
            keys.write_private(folder / "he-secret.ctx", b"secret")

    keys.init_federation(tmp_path, 2, he_context_writer=writer)
    assert (tmp_path / "server" / "he-public.ctx").read_bytes() == b"public"
    assert (tmp_path / "clients" / "1" / "he-secret.ctx").read_bytes() == b"secret"


def test_write_private_never_overwrites(tmp_path: Path) -> None:
    keys.write_private(tmp_path / "k", b"a")
    with pytest.raises(FileExistsError):
        keys.write_private(tmp_path / "k", b"b")
    assert (tmp_path / "k").read_bytes() == b"a"


# --- loading ----------------------------------------------------------------------------------


def test_missing_file(fed: Path) -> None:
    path = fed / "clients" / "0" / "seal.key"
    path.unlink()
    with pytest.raises(KeyFileError, match=r"seal\.key: missing"):
        keys.ClientKeys.load(path.parent)


@pytest.mark.parametrize("content", [b"", b"x" * 31, b"x" * 33])
def test_wrong_length_secret(tmp_path: Path, content: bytes) -> None:
    keys.write_private(tmp_path / "s.key", content)
    with pytest.raises(KeyFileError, match=rf"s\.key: expected exactly 32 bytes, found {len(content)}"):
        keys.load_secret(tmp_path / "s.key")


def test_garbled_pem(fed: Path) -> None:
    for name, loader in (("signing.key", keys.load_signing_key), ("signing.pub", keys.load_public_key)):
        path = fed / "server" / name
        data = path.read_bytes()
        path.write_bytes(data[:40] + b"!!garbage!!" + data[60:])
        with pytest.raises(KeyFileError, match=name.replace(".", r"\.")):
            loader(path)
    # a key of the wrong kind is refused too
    with pytest.raises(KeyFileError, match="public key"):
        keys.load_public_key(fed / "clients" / "0" / "seal.key")


def test_mismatched_public_key(fed: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    keys.init_federation(other, 1)
    (fed / "server" / "signing.pub").unlink()
    keys.write_private(fed / "server" / "signing.pub", (other / "server" / "signing.pub").read_bytes())
    with pytest.raises(KeyFileError, match="does not match"):
        keys.ServerKeys.load(fed / "server")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644])
def test_group_or_other_access_is_refused(fed: Path, mode: int) -> None:
    path = fed / "server" / "watermark.key"
    path.chmod(mode)
    with pytest.raises(KeyFileError) as err:
        keys.ServerKeys.load(fed / "server")
    assert str(path) in str(err.value) and f"chmod 600 {path}" in str(err.value)


def test_public_key_files_are_checked_too(fed: Path) -> None:
    path = fed / "clients" / "1" / "server-signing.pub"
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        keys.ClientKeys.load(path.parent)


def test_unknown_site_has_no_seal_key(fed: Path) -> None:
    with pytest.raises(KeyFileError, match="'7'"):
        keys.ServerKeys.load(fed / "server").seal_key("7")


def test_repr_hides_secrets(fed: Path) -> None:
    server = keys.ServerKeys.load(fed / "server")
    client = keys.ClientKeys.load(fed / "clients" / "2")
    text = repr(server) + str(server) + repr(client) + str(client)
    assert "secrets hidden" in text
    for secret in _all_secret_bytes(fed):
        assert secret.hex() not in text and repr(secret) not in text


def test_messages_never_hold_key_bytes(fed: Path) -> None:
    path = fed / "server" / "signing.key"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(KeyFileError) as err:
        keys.load_signing_key(path)
    assert "PRIVATE" not in str(err.value) and data.decode()[30:60] not in str(err.value)


# --- contexts, round keys, signatures ---------------------------------------------------------


def test_fixed_signature_vector() -> None:
    signing_key = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    assert keys.sign_digest(signing_key, bytes(32)).hex() == VECTOR_SIGNATURE


def test_signatures(fed: Path, tmp_path: Path) -> None:
    server = keys.ServerKeys.load(fed / "server")
    client = keys.ClientKeys.load(fed / "clients" / "0")
    digest = hashlib.sha256(b"model").digest()
    signature = keys.sign_digest(server.signing_key, digest)
    keys.verify_digest(client.server_public_key, digest, signature)
    with pytest.raises(TamperError, match="bad signature"):
        keys.verify_digest(client.server_public_key, hashlib.sha256(b"other").digest(), signature)
    with pytest.raises(TamperError, match="bad signature"):
        keys.verify_digest(client.server_public_key, digest, signature[:-1] + bytes([signature[-1] ^ 1]))
    keys.init_federation(tmp_path / "other", 1)
    forger = keys.ServerKeys.load(tmp_path / "other" / "server")
    with pytest.raises(TamperError, match="bad signature"):
        keys.verify_digest(client.server_public_key, digest, keys.sign_digest(forger.signing_key, digest))
    # a raw signature over the bare digest (no FedSeal domain tag) is not accepted
    with pytest.raises(TamperError):
        keys.verify_digest(client.server_public_key, digest, server.signing_key.sign(digest))


# --- command line -----------------------------------------------------------------------------


@pytest.fixture
def cli_main():
    from common import cli

    return cli.main


def test_cli_init(cli_main, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "fed"
    assert cli_main(["keys", "init", str(root), "--sites", "2"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(root / "server"), str(root / "clients" / "0"), str(root / "clients" / "1")]
    assert err == ""
    for secret in _all_secret_bytes(root):
        assert secret.hex() not in out
    keys.ServerKeys.load(root / "server")


@pytest.mark.parametrize("n", ["0", "-3", "1"])
def test_cli_rejects_fewer_than_two_sites_like_simulate(cli_main, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        n: str) -> None:
    assert cli_main(["keys", "init", str(tmp_path), "--sites", n]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "at least 2" in err and "Traceback" not in err
    assert not (tmp_path / "server").exists()


def test_cli_refuses_overwrite(cli_main, fed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["keys", "init", str(fed), "--clients", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and str(fed / "server") in err


def test_cli_help_says_what_goes_where(cli_main, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["keys", "init", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for words in ("server machine", "copy to site", "0600", "--sites", "server-signing.pub"):
        assert words in out


def test_he_contexts_secret_at_sites_public_at_server(tmp_path: Path) -> None:
    from common.secure import he

    keys.init_federation(tmp_path, 2)
    server = keys.ServerKeys.load(tmp_path / "server")
    public = server.he_public_context()
    he.assert_no_secret(public)
    secrets_ = [keys.ClientKeys.load(keys.client_dir(tmp_path, cid)).he_secret_context() for cid in ("0", "1")]
    assert secrets_[0] == secrets_[1]
    he.check_secret(secrets_[0])
    assert not (tmp_path / "server" / keys.HE_SECRET).exists()
    # A server folder given the secret context is refused, never used.
    path = tmp_path / "server" / keys.HE_PUBLIC
    path.chmod(0o600)
    path.write_bytes(secrets_[0])
    with pytest.raises(KeyFileError, match="holds the secret key"):
        server.he_public_context()
