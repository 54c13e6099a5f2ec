"""`fedseal keys init`: make a federation's key folders (see common/integrity/keys.py)."""

from __future__ import annotations

import argparse

from common.errors import InputError
from common.integrity import keys

_INIT_HELP = """\
Make fresh keys for a federation of N sites under DIR:

  DIR/server/            keep on the server machine only
    watermark.key        federation watermark key K_wm (shared with every site)
    signing.key          server Ed25519 signing key (never leaves the server)
    signing.pub          its public key
    seals/<id>.key       one seal key per site
    he-public.ctx        CKKS parameters without any key (secure-mode he)
  DIR/clients/<id>/      copy to site <id> only (ids 0..N-1)
    watermark.key        the same K_wm
    server-signing.pub   the server's public key (to check signed models)
    seal.key             this site's seal key (shared with the server only)
    he-secret.ctx        the federation's CKKS secret key (sites only; never
                         copy it to the server)

Every file is written with mode 0600 and every folder 0700; copy them with
their permissions kept (e.g. scp -p, rsync -p) over a channel you trust.
Refuses to overwrite: DIR/server and DIR/clients must be absent or empty.
Prints the folders written; never prints key material."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `keys init` to the `fedseal` command line."""
    group = subparsers.add_parser(
        "keys", help="make federation key folders", description="Federation keys (DESIGN.md §5)."
    )
    sub = group.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    init = sub.add_parser(
        "init",
        help="write the server's key folder and one folder per site",
        description=_INIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("dir", metavar="DIR", help="folder to write server/ and clients/ into")
    init.add_argument(
        "--clients",
        "--sites",
        dest="clients",
        metavar="N",
        type=int,
        required=True,
        help=f"number of sites, at least {keys.MIN_SITES} (ids 0..N-1); --sites is the same option",
    )
    init.set_defaults(handler=_init)


def _init(args: argparse.Namespace) -> int:
    if args.clients < keys.MIN_SITES:
        raise InputError(f"--clients must be at least {keys.MIN_SITES}, got {args.clients} (with one site the "
                         "aggregate is that site's own update: nothing hides it)")
    written = keys.init_federation(args.dir, args.clients)
    for folder in (written.server, *written.clients):
        print(folder)
    return 0
