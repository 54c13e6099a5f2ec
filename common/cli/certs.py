"""`fedseal certs tls | node-key | secret`: deployment credentials (see common/integrity/certs.py)."""

from __future__ import annotations

import argparse

from common.integrity import certs

_TLS_HELP = """\
Make a private CA and a TLS certificate for the SuperLink (the coordinator) in DIR:

  DIR/ca.pem       CA certificate: give it to every site and to whoever runs `flwr`
  DIR/ca.key       CA private key (0600): keep it offline, it signs nothing more
  DIR/server.pem   the SuperLink's certificate, one subjectAltName per --host
  DIR/server.key   its private key (0600): stays on the coordinator machine

  flower-superlink --ssl-ca-certfile DIR/ca.pem --ssl-certfile DIR/server.pem \\
                   --ssl-keyfile DIR/server.key ...
  flower-supernode --root-certificates DIR/ca.pem ...

Sites connect to the name or address they use in --superlink: it must be one of the
--host values. Refuses to overwrite any of the four files."""

_NODE_KEY_HELP = """\
Make a SuperNode authentication key pair (ECDSA P-384, OpenSSH format) in DIR:

  DIR/auth.key     private key (0600): flower-supernode --auth-supernode-private-key DIR/auth.key
  DIR/auth.pub     public key: send it to the coordinator, who runs
                   flwr supernode register DIR/auth.pub

Each site makes its own; the private key never leaves the site. Refuses to overwrite."""

_SECRET_HELP = """\
Write 32 random bytes (mode 0600) to FILE, for --superexec-auth-secret-file: the SuperLink
(or a SuperNode) and the flower-superexec that runs its apps must be given the same file.
Refuses to overwrite."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `certs tls`, `certs node-key` and `certs secret` to the `fedseal` command line."""
    group = subparsers.add_parser(
        "certs", help="make TLS certificates and Flower deployment credentials",
        description="Credentials for a real deployment (README: Deployment guide).",
    )
    sub = group.add_subparsers(dest="certs_command", metavar="SUBCOMMAND", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    tls = sub.add_parser("tls", help="CA + SuperLink server certificate", description=_TLS_HELP, formatter_class=raw)
    tls.add_argument("dir", metavar="DIR", help="folder to write ca.pem, ca.key, server.pem, server.key into")
    tls.add_argument("--host", action="append", metavar="HOST",
                     help="IP address or DNS name sites use to reach the SuperLink; repeatable "
                     f"(default: {' and '.join(certs.DEFAULT_HOSTS)})")
    tls.add_argument("--days", type=int, default=certs.DEFAULT_DAYS, help="validity in days (default: %(default)s)")
    tls.set_defaults(handler=_tls)

    node = sub.add_parser("node-key", help="a SuperNode's authentication key pair", description=_NODE_KEY_HELP,
                          formatter_class=raw)
    node.add_argument("dir", metavar="DIR", help="folder to write auth.key and auth.pub into")
    node.add_argument("--comment", default="", help="text appended to auth.pub, e.g. the site's name")
    node.set_defaults(handler=_node_key)

    secret = sub.add_parser("secret", help="a SuperExec shared secret file", description=_SECRET_HELP,
                            formatter_class=raw)
    secret.add_argument("file", metavar="FILE", help="where to write the secret")
    secret.set_defaults(handler=_secret)


def _tls(args: argparse.Namespace) -> int:
    files = certs.make_tls(args.dir, tuple(args.host or certs.DEFAULT_HOSTS), args.days)
    for path in (files.ca_cert, files.ca_key, files.server_cert, files.server_key):
        print(path)
    return 0


def _node_key(args: argparse.Namespace) -> int:
    files = certs.make_node_key(args.dir, args.comment)
    print(files.private_key)
    print(files.public_key)
    return 0


def _secret(args: argparse.Namespace) -> int:
    print(certs.make_secret(args.file))
    return 0
