"""Federation key files: make them, load them, derive round keys, sign model digests.

Layout written by `init_federation(DIR, N)` (DESIGN.md §5); every file 0600, every folder 0700::

    DIR/server/watermark.key          K_wm, 32 random bytes (server and every site)
    DIR/server/signing.key            server Ed25519 private key, PEM PKCS8, unencrypted
    DIR/server/signing.pub            its public key, PEM
    DIR/server/seals/<id>.key         one 32-byte seal key per site (the server holds all)
    DIR/clients/<id>/watermark.key    the same K_wm
    DIR/clients/<id>/server-signing.pub   the server's public key only
    DIR/clients/<id>/seal.key         that site's seal key only
    DIR/server/he-public.ctx          CKKS parameters without any key (secure-mode he)
    DIR/clients/<id>/he-secret.ctx    CKKS parameters + the federation's CKKS secret key (sites only)

Site ids are "0".."N-1" (the simulation's partition ids). Only `cryptography` and the standard
library; key bytes never appear in a message, a repr or a log.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from common.errors import InputError, KeyFileError, TamperError
from common.kdf import SECRET_LEN

MIN_SITES = 2  # `keys init` and `simulate`: with one site the aggregate is that site's own update
SERVER_DIR = "server"
CLIENTS_DIR = "clients"
SEALS_DIR = "seals"
WATERMARK_KEY = "watermark.key"
SIGNING_KEY = "signing.key"
SIGNING_PUB = "signing.pub"
SERVER_SIGNING_PUB = "server-signing.pub"
SEAL_KEY = "seal.key"
HE_PUBLIC = "he-public.ctx"
HE_SECRET = "he-secret.ctx"

_MAX_KEY_FILE = 64 * 1024
_DIGEST_SIG_TAG = b"fedseal/model-digest-signature/v1"

HeContextWriter = Callable[[Path, Sequence[Path]], None]


# --- layout -----------------------------------------------------------------------------------


def server_dir(root: str | os.PathLike) -> Path:
    """The server's folder inside a key folder made by `init_federation`."""
    return Path(root) / SERVER_DIR


def client_dir(root: str | os.PathLike, client_id: str) -> Path:
    """Site `client_id`'s folder inside a key folder made by `init_federation`."""
    return Path(root) / CLIENTS_DIR / str(client_id)


@dataclass(frozen=True)
class FederationDirs:
    """The folders `init_federation` wrote: one for the server, one per site."""

    server: Path
    clients: tuple[Path, ...]


# --- writing ----------------------------------------------------------------------------------


def write_private(path: str | os.PathLike, data: bytes) -> None:
    """Create `path` with mode 0600 and write `data`; never overwrites an existing file."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.fchmod(fd, 0o600)  # in case a umask or ACL left it otherwise
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir_private(path: Path) -> Path:
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    return path


def _is_nonempty(path: Path) -> bool:
    if not path.exists() and not path.is_symlink():
        return False
    if not path.is_dir() or path.is_symlink():
        return True
    return any(path.iterdir())


def write_he_contexts(server: Path, clients: Sequence[Path], max_sites: int = 0) -> None:
    """Write a fresh CKKS secret context to every site folder and its public context (no key) to
    the server folder (common/secure/he.py). `max_sites`: the most sites one sum holds (a round's
    cohort), at least he.MAX_SITES; each site's share of the sum's range shrinks as it grows."""
    from common.secure import he  # SEAL is loaded only when keys are made or used

    secret, public = he.make_keys(max_sites=max(he.MAX_SITES, max_sites))
    he.assert_no_secret(public)
    write_private(server / HE_PUBLIC, public)
    for folder in clients:
        write_private(folder / HE_SECRET, secret)


def init_federation(
    root: str | os.PathLike, clients: int, *, he_context_writer: HeContextWriter | None = write_he_contexts
) -> FederationDirs:
    """Make a fresh federation's keys under `root` (layout in the module docstring).

    `he_context_writer(server_dir, client_dirs)` (default `write_he_contexts`) is called before
    anything is moved into place, to add the HE context files; the server's copy must not hold
    the CKKS secret key. Everything is built in a hidden `root/.tmp-keys-*` folder and renamed
    into place, sites first and the server folder last, so a federation whose `server/` folder
    exists is complete. Raises InputError if `clients < 1` or `root/server` or `root/clients`
    exists and is not empty.
    """
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise InputError(f"the number of sites must be a whole number >= 1, got {clients!r}")
    root = Path(root)
    targets = (root / CLIENTS_DIR, root / SERVER_DIR)  # order of the final renames
    for target in reversed(targets):
        if _is_nonempty(target):
            raise InputError(f"{target} already exists and is not empty; refusing to overwrite keys")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix=".tmp-keys-", dir=root))
    moved: list[tuple[Path, Path]] = []
    try:
        ids = [str(i) for i in range(clients)]
        built_server, built_clients = _build(tmp, ids)
        if he_context_writer is not None:
            he_context_writer(built_server, built_clients)
        for target in targets:
            source = tmp / target.name
            if target.is_dir() and not target.is_symlink():
                target.rmdir()  # empty (checked above); fails if it filled up meanwhile
            os.rename(source, target)
            moved.append((target, source))
    except BaseException as exc:
        for target, source in reversed(moved):
            os.rename(target, source)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise InputError(f"could not write keys under {root}: {exc.strerror or exc}") from exc
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return FederationDirs(server_dir(root), tuple(client_dir(root, cid) for cid in ids))


def _build(tmp: Path, ids: list[str]) -> tuple[Path, list[Path]]:
    """Write every key file under `tmp`; returns the server folder and the site folders."""
    watermark_key = os.urandom(SECRET_LEN)
    signing_key = Ed25519PrivateKey.generate()
    private_pem = signing_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    server = _mkdir_private(tmp / SERVER_DIR)
    write_private(server / WATERMARK_KEY, watermark_key)
    write_private(server / SIGNING_KEY, private_pem)
    write_private(server / SIGNING_PUB, public_pem)
    seals = _mkdir_private(server / SEALS_DIR)

    clients_root = _mkdir_private(tmp / CLIENTS_DIR)
    client_dirs = []
    for cid in ids:
        seal_key = os.urandom(SECRET_LEN)
        write_private(seals / f"{cid}.key", seal_key)
        folder = _mkdir_private(clients_root / cid)
        write_private(folder / WATERMARK_KEY, watermark_key)
        write_private(folder / SERVER_SIGNING_PUB, public_pem)
        write_private(folder / SEAL_KEY, seal_key)
        client_dirs.append(folder)
    return server, client_dirs


# --- loading ----------------------------------------------------------------------------------


def _read_private(path: str | os.PathLike, what: str) -> bytes:
    """Read a key file, refusing one that is missing, not a file, or open to group/others."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: missing ({what})") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open ({what}): {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{path}: not a regular file ({what})")
        if info.st_mode & 0o077:
            raise KeyFileError(
                f"{path}: readable or writable by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); fix it with: chmod 600 {path}"
            )
        if info.st_size > _MAX_KEY_FILE:
            raise KeyFileError(f"{path}: too large to be a key file ({what})")
        chunks = []
        while chunk := os.read(fd, _MAX_KEY_FILE):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_secret(path: str | os.PathLike) -> bytes:
    """Load a 32-byte secret key file (watermark or seal key)."""
    data = _read_private(path, "32-byte secret key")
    if len(data) != SECRET_LEN:
        raise KeyFileError(f"{path}: expected exactly {SECRET_LEN} bytes, found {len(data)}")
    return data


def load_signing_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """Load the server's Ed25519 private key (PEM, PKCS8, unencrypted)."""
    data = _read_private(path, "Ed25519 private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an unencrypted PEM (PKCS8) Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    """Load the server's Ed25519 public key (PEM)."""
    data = _read_private(path, "Ed25519 public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not a PEM Ed25519 public key")
    return key


def _same_public_key(a: Ed25519PublicKey, b: Ed25519PublicKey) -> bool:
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    return a.public_bytes(*raw) == b.public_bytes(*raw)


@dataclass(frozen=True, repr=False, eq=False)  # eq off: no key comparisons
class ServerKeys:
    """What the server holds: K_wm, its signing key pair, and every site's seal key."""

    watermark_key: bytes
    signing_key: Ed25519PrivateKey
    public_key: Ed25519PublicKey
    seal_keys: dict[str, bytes]
    folder: Path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ServerKeys:
        """Load the server's folder (`DIR/server` as written by `init_federation`)."""
        folder = Path(folder)
        signing_key = load_signing_key(folder / SIGNING_KEY)
        public_key = load_public_key(folder / SIGNING_PUB)
        if not _same_public_key(signing_key.public_key(), public_key):
            raise KeyFileError(f"{folder / SIGNING_PUB}: does not match {folder / SIGNING_KEY}")
        seals = folder / SEALS_DIR
        if not seals.is_dir():
            raise KeyFileError(f"{seals}: missing (folder of the sites' seal keys)")
        seal_keys = {p.stem: load_secret(p) for p in sorted(seals.glob("*.key"))}
        if not seal_keys:
            raise KeyFileError(f"{seals}: holds no seal keys (<site-id>.key)")
        return cls(load_secret(folder / WATERMARK_KEY), signing_key, public_key, seal_keys, folder)

    def seal_key(self, client_id: str) -> bytes:
        """The seal key shared with site `client_id`; KeyFileError if the site is unknown."""
        try:
            return self.seal_keys[str(client_id)]
        except KeyError:
            raise KeyFileError(f"no seal key for site {str(client_id)!r} in the server's keys") from None

    def he_public_context(self) -> bytes:
        """The CKKS public context (secure-mode he); KeyFileError if missing or holding a secret key."""
        return _load_he_context(self.folder / HE_PUBLIC, public=True)

    def __repr__(self) -> str:
        return f"ServerKeys(sites={len(self.seal_keys)}, secrets hidden)"


@dataclass(frozen=True, repr=False, eq=False)  # eq off: no key comparisons
class ClientKeys:
    """What one site holds: K_wm, the server's public key, and its own seal key."""

    client_id: str
    watermark_key: bytes
    server_public_key: Ed25519PublicKey
    seal_key: bytes
    folder: Path

    @classmethod
    def load(cls, folder: str | os.PathLike, client_id: str | None = None) -> ClientKeys:
        """Load a site's folder (`DIR/clients/<id>`); the id defaults to the folder's name."""
        folder = Path(folder)
        return cls(
            str(client_id) if client_id is not None else folder.resolve().name,
            load_secret(folder / WATERMARK_KEY),
            load_public_key(folder / SERVER_SIGNING_PUB),
            load_secret(folder / SEAL_KEY),
            folder,
        )

    def he_secret_context(self) -> bytes:
        """The federation's CKKS secret context (secure-mode he); KeyFileError if missing or bad."""
        return _load_he_context(self.folder / HE_SECRET, public=False)

    def __repr__(self) -> str:
        return f"ClientKeys(client_id={self.client_id!r}, secrets hidden)"


def _load_he_context(path: Path, *, public: bool) -> bytes:
    from common.secure import he

    data = _read_private(path, "CKKS public context" if public else "CKKS secret context")
    try:
        if public:
            he.assert_no_secret(data)
        else:
            he.check_secret(data)
    except he.HEError as exc:
        raise KeyFileError(f"{path}: {exc}") from None
    return data


# --- contexts and round keys ------------------------------------------------------------------


# --- signatures -------------------------------------------------------------------------------


def sign_digest(signing_key: Ed25519PrivateKey, digest: bytes) -> bytes:
    """Sign a published model's digest (Ed25519, domain-separated); returns 64 bytes."""
    if not isinstance(digest, bytes) or not digest:
        raise ValueError("digest must be non-empty bytes")
    return signing_key.sign(_DIGEST_SIG_TAG + digest)


def verify_digest(public_key: Ed25519PublicKey, digest: bytes, signature: bytes) -> None:
    """Check a digest's signature; raises TamperError if it was not made by this server key."""
    try:
        public_key.verify(bytes(signature), _DIGEST_SIG_TAG + bytes(digest))
    except InvalidSignature:
        raise TamperError(
            "bad signature on the model digest: not signed by this federation's server key"
        ) from None
