"""common/integrity/certs.py and `fedseal certs`: CA + server certificate, SuperNode keys, SuperExec secret."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.cli import main as cli
from common.errors import InputError
from common.integrity import certs


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_tls_files_chain_and_sans(tmp_path):
    files = certs.make_tls(tmp_path / "tls", ("127.0.0.1", "coordinator.example.org", "::1"), days=30)
    assert _mode(files.ca_key) == 0o600 and _mode(files.server_key) == 0o600
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.DNSName) == ["coordinator.example.org"]
    days = (server.not_valid_after_utc - server.not_valid_before_utc).days
    assert 30 <= days <= 31
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()


def test_tls_handshake_on_loopback_checks_the_ip_san(tmp_path):
    """A client trusting only ca.pem accepts the server at 127.0.0.1 and refuses a certificate
    made for another address."""
    good = certs.make_tls(tmp_path / "good", ("127.0.0.1",))
    other = certs.make_tls(tmp_path / "other", ("10.1.2.3",))

    def handshake(files) -> None:
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(files.server_cert, files.server_key)
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        def serve():
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_ctx = ssl.create_default_context(cafile=str(files.ca_cert))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"x")
        finally:
            thread.join(timeout=5)
            listener.close()

    handshake(good)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(other)


def test_tls_refuses_to_overwrite_and_bad_hosts(tmp_path):
    certs.make_tls(tmp_path)
    before = (tmp_path / certs.CA_KEY).read_bytes()
    with pytest.raises(InputError, match="refusing to overwrite"):
        certs.make_tls(tmp_path)
    assert (tmp_path / certs.CA_KEY).read_bytes() == before
    for bad in (("bad host",), (), ("-x.org",), ("a..b",)):
        with pytest.raises(InputError):
            certs.make_tls(tmp_path / "x", bad)
    with pytest.raises(InputError, match="days"):
        certs.make_tls(tmp_path / "y", days=0)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_node_key_is_openssh_p384_and_pairs(tmp_path):
    files = certs.make_node_key(tmp_path / "site", comment="hospital-a")
    assert _mode(files.private_key) == 0o600
    private = serialization.load_ssh_private_key(files.private_key.read_bytes(), None)
    public_line = files.public_key.read_text()
    assert public_line.startswith("ecdsa-sha2-nistp384 ") and public_line.rstrip().endswith(" hospital-a")
    public = serialization.load_ssh_public_key(public_line.encode())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
    assert private.public_key().public_numbers() == public.public_numbers()
    with pytest.raises(InputError, match="refusing to overwrite"):
        certs.make_node_key(tmp_path / "site")
    with pytest.raises(InputError, match="one line"):
        certs.make_node_key(tmp_path / "other", comment="a\nb")


def test_node_keys_differ(tmp_path):
    a = certs.make_node_key(tmp_path / "a").public_key.read_bytes()
    b = certs.make_node_key(tmp_path / "b").public_key.read_bytes()
    assert a != b


def test_secret(tmp_path):
    path = certs.make_secret(tmp_path / "superexec.secret")
    assert len(path.read_bytes()) == certs.SECRET_BYTES and _mode(path) == 0o600
    assert certs.make_secret(tmp_path / "other").read_bytes() != path.read_bytes()
    with pytest.raises(InputError, match="refusing to overwrite"):
        certs.make_secret(path)
    with pytest.raises(InputError, match="no such folder"):
        certs.make_secret(tmp_path / "missing" / "secret")


def test_cli(tmp_path, capsys):
    assert cli(["certs", "tls", str(tmp_path / "tls"), "--host", "127.0.0.1"]) == 0
    assert cli(["certs", "node-key", str(tmp_path / "n"), "--comment", "site-0"]) == 0
    assert cli(["certs", "secret", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "tls" / "server.pem") in out and str(tmp_path / "n" / "auth.pub") in out
    secret_bytes = (tmp_path / "s").read_bytes()
    key_text = (tmp_path / "tls" / "server.key").read_text()
    assert key_text not in out and secret_bytes.hex() not in out  # paths only, never key material
    assert cli(["certs", "tls", str(tmp_path / "tls")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert cli(["certs", "tls", str(tmp_path / "t2"), "--host", "not a host"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedseal: error:") and "Traceback" not in err
