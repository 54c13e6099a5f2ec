"""Deployment credentials for Flower's Deployment Engine, made with `cryptography` only.

Three kinds, one writer each (every private file 0600, nothing is ever overwritten):

- `make_tls(DIR, hosts)`: a private CA and a server certificate signed by it, for the
  SuperLink's TLS (`--ssl-ca-certfile ca.pem --ssl-certfile server.pem --ssl-keyfile server.key`;
  sites and the `flwr` CLI trust `ca.pem`). Each host becomes a subjectAltName: an IP address
  (`IP:127.0.0.1`) or a DNS name. `ca.key` signs nothing after this: keep it offline.
- `make_node_key(DIR)`: a SuperNode's authentication key pair, ECDSA P-384 in OpenSSH format
  (`auth.key` for `flower-supernode --auth-supernode-private-key`, `auth.pub` for
  `flwr supernode register`). A site makes its own and sends only `auth.pub`.
- `make_secret(FILE)`: a random shared secret for `--superexec-auth-secret-file`: the SuperLink
  (or SuperNode) and the SuperExec that claims its app tasks must hold the same file.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import InputError
from common.integrity.keys import write_private

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
NODE_KEY = "auth.key"
NODE_PUB = "auth.pub"
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_DAYS = 365
SECRET_BYTES = 32


@dataclass(frozen=True)
class TlsFiles:
    """The files `make_tls` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeyFiles:
    """The files `make_node_key` wrote."""

    private_key: Path
    public_key: Path


def subject_alt_names(hosts: list[str] | tuple[str, ...]) -> list[x509.GeneralName]:
    """One SAN per host: an IPAddress for an IPv4/IPv6 literal, else a DNSName.

    Raises InputError for an empty list or a name that is neither an IP address nor a DNS name.
    """
    if not hosts:
        raise InputError("at least one host (IP address or DNS name) is needed for the server certificate")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        labels = host.rstrip(".").split(".")
        if not host or not all(label and len(label) <= 63 and label.replace("-", "").isalnum()
                               and label.isascii() and not label.startswith("-") for label in labels):
            raise InputError(f"host {host!r} is neither an IP address nor a DNS name")
        names.append(x509.DNSName(host))
    return names


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise InputError(f"{path} already exists; refusing to overwrite it")


def _write_public(path: Path, data: bytes) -> None:
    """Create `path` (mode 0644) and write `data`; never overwrites."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedSeal federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls(folder: str | os.PathLike, hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS,
             days: int = DEFAULT_DAYS) -> TlsFiles:
    """Write a new CA and a server certificate for `hosts` into `folder` (created if needed).

    ECDSA P-384 keys, SHA-384 signatures; the CA may sign end-entity certificates only
    (path length 0); the server certificate is valid for TLS server auth on every host in
    `hosts` for `days` days. Raises InputError if any of the four files exists.
    """
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise InputError(f"days must be a whole number >= 1, got {days!r}")
    sans = subject_alt_names(list(hosts))
    folder = Path(folder)
    files = TlsFiles(folder / CA_CERT, folder / CA_KEY, folder / SERVER_CERT, folder / SERVER_KEY)
    _refuse_existing(*vars(files).values())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {folder}: {exc.strerror or exc}") from None

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("FedSeal federation CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(str(hosts[0]))).issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    write_private(files.ca_key, _pem_key(ca_key))
    write_private(files.server_key, _pem_key(server_key))
    _write_public(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_public(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return files


def make_node_key(folder: str | os.PathLike, comment: str = "") -> NodeKeyFiles:
    """Write a SuperNode authentication key pair (ECDSA P-384, OpenSSH format) into `folder`.

    `auth.key` (0600) is the private key the SuperNode starts with; `auth.pub` (one line,
    `ecdsa-sha2-nistp384 ... COMMENT`) is what the coordinator registers. Raises InputError if
    either file exists.
    """
    if any(ch in comment for ch in "\r\n"):
        raise InputError("the key comment must be one line")
    folder = Path(folder)
    files = NodeKeyFiles(folder / NODE_KEY, folder / NODE_PUB)
    _refuse_existing(files.private_key, files.public_key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {folder}: {exc.strerror or exc}") from None
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_private(files.private_key, private)
    _write_public(files.public_key, public + (b" " + comment.encode() if comment else b"") + b"\n")
    return files


def make_secret(path: str | os.PathLike) -> Path:
    """Write a random 32-byte shared secret (mode 0600) for `--superexec-auth-secret-file`.

    Raises InputError if `path` exists or its folder is missing.
    """
    path = Path(path)
    _refuse_existing(path)
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such folder")
    write_private(path, os.urandom(SECRET_BYTES))
    return path
