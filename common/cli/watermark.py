"""`fedseal keygen | watermark | verify | recover`: the fragile watermark on any model file."""

from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path

from common.errors import InputError
from common.integrity import watermark
from common.integrity.keys import load_public_key, load_secret, write_private
from common.integrity.published import SignatureCheck, check_signature
from common.integrity.watermark.bits import ALLOWED_K
from common.run import modelio
from common.run.records import CONTEXT_KEY, SIGNATURE_KEY


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="make a new 32-byte watermark key file (mode 0600)")
    p.add_argument("--out", required=True, metavar="KEY", help="where to write the key; never overwritten")
    p.set_defaults(handler=_keygen)

    p = sub.add_parser(
        "watermark",
        help="embed the fragile watermark into a model file",
        description="Embed FedSeal's fragile, self-recovering watermark into every tensor of a model. "
        "Each float32 changes by at most 2^-(24-k) relative; sign and exponent are untouched.",
    )
    p.add_argument("input", metavar="IN", help="model file (.safetensors, or a .pt/.pth state dict)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="watermarked .safetensors file")
    _key_args(p)
    p.add_argument("--k", type=int, default=watermark.DEFAULT_K, choices=ALLOWED_K,
                   help="low mantissa bits per float32 used by the watermark (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(handler=_watermark)

    p = sub.add_parser(
        "verify",
        help="check a watermarked model: exit 0 intact, 1 tampered or not watermarked under this key",
        description="Check every block of a watermarked model and give one verdict: intact; tampered "
        "(which tensors and parameter ranges, and whether `fedseal recover` can restore them); or "
        "not-watermarked-under-this-key (a wrong key or context, or a model never watermarked). With "
        "--signing-pub, also check the server's signature: who signed, for which run and round, and "
        "whether these bytes are the signed ones. Exit 0 only when everything checked holds.",
    )
    p.add_argument("input", metavar="IN")
    _key_args(p)
    p.add_argument("--signing-pub", default=None, metavar="FILE",
                   help="the server's Ed25519 public key (server-signing.pub of a site's key folder): "
                   "also check the signature a FedSeal run wrote into the model's metadata")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=_verify)

    p = sub.add_parser(
        "recover",
        help="restore a tampered watermarked model bit-exactly: exit 0 restored, 1 partly",
        description="Restore tampered blocks from the recovery data hidden in the model. Exit 0 when OUT "
        "verifies intact; 1 when only part could be restored (OUT holds what was, the report says what was not).",
    )
    p.add_argument("input", metavar="IN")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="restored .safetensors file")
    _key_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(handler=_recover)


def _key_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, metavar="KEY", help="watermark key file (from `fedseal keygen`)")
    p.add_argument("--context", default=None, metavar="TEXT",
                   help="what the watermark is bound to, e.g. run and round. Default: the context a FedSeal "
                   "run wrote into the file's metadata, else empty. A model checked under another context fails.")


def _check_output(path: str, force: bool, source: str) -> None:
    if Path(path).resolve() == Path(source).resolve():
        raise InputError(f"{path}: OUT must differ from IN")
    if Path(path).exists() and not force:
        raise InputError(f"{path}: exists (use --force to overwrite)")


def _keygen(args) -> int:
    try:
        write_private(args.out, secrets.token_bytes(32))
    except FileExistsError:
        raise InputError(f"{args.out}: exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise InputError(f"{args.out}: cannot write ({exc.strerror})") from None
    print(f"wrote {args.out} (32 random bytes, mode 0600)")
    return 0


def _watermark(args) -> int:
    _check_output(args.output, args.force, args.input)
    key = load_secret(args.key)
    state, _ = modelio.load_state(args.input)
    args.context = args.context or ""
    marked = watermark.embed(state, key, args.context, k=args.k)
    metadata = {watermark.MANIFEST_KEY: watermark.manifest_of(marked, args.k)}
    if args.context:
        metadata[CONTEXT_KEY] = args.context
    modelio.save_state(args.output, marked, metadata)
    params = sum(a.size for a in marked.values())
    print(f"watermarked {len(marked)} tensors ({params:,} parameters, k={args.k}) -> {args.output}")
    return 0


def _load_marked(path: str, context: str | None):
    """Tensors, metadata, manifest and the context to check under (flag, else the file's, else empty)."""
    state, metadata = modelio.load_state(path)
    if context is None:
        context = metadata.get(CONTEXT_KEY, "")
    return state, metadata, metadata.get(watermark.MANIFEST_KEY), context


def _print_report(report: watermark.WatermarkReport, as_json: bool, verb: str, context: str,
                  signature: SignatureCheck | None = None) -> None:
    if as_json:
        extra = {"signature": signature.to_json()} if signature is not None else {}
        print(json.dumps({**report.to_json(), "context": context, **extra}))
        return
    if report.verdict == watermark.NOT_WATERMARKED:
        print(f"{verb}: NOT WATERMARKED under this key and context: {report.total_blocks - report.tampered_blocks} "
              f"of {report.total_blocks} blocks verify (context {context!r}). A wrong key or context, or a model "
              "that was never watermarked (a checkpoint, a plain .pt): not a sign of tampering by itself.")
        _print_signature(signature)
        return
    state = "intact" if report.verdict == watermark.INTACT else "TAMPERED"
    print(f"{verb}: {state}: {report.tampered_blocks} of {report.total_blocks} blocks fail the check "
          f"(context {context!r})")
    _print_signature(signature)
    for problem in report.problems:
        print(f"  problem: {problem}")
    for name, damage in report.tensors.items():
        ranges = ", ".join(f"[{a}:{b})" for a, b in damage.tampered_ranges[:8])
        more = " ..." if len(damage.tampered_ranges) > 8 else ""
        print(f"  {name}: {len(damage.tampered_blocks)} blocks, parameters {ranges}{more}")
    if report.restored_blocks is not None:
        print(f"  restored {report.restored_blocks} blocks bit-exactly")
        for name, damage in (report.unrestored or {}).items():
            print(f"  NOT restored: {name}: {len(damage.tampered_blocks)} blocks")
    elif report.tampered_blocks:
        print("  recoverable: " + ("yes (run `fedseal recover`)" if report.recoverable else "no, beyond the recovery bound"))


def _print_signature(check: SignatureCheck | None) -> None:
    if check is None:
        return
    made = f"run {check.run}, round {check.round}" if check.run else "no FedSeal run context"
    state = "valid" if check.valid else "INVALID"
    print(f"signature: {state}: key {check.signer}; {made}; bytes match the signed ones: "
          f"{'yes' if check.bytes_match else 'no'}. {check.reason}")


def _verify(args) -> int:
    key = load_secret(args.key)
    public_key = load_public_key(args.signing_pub) if args.signing_pub else None
    state, metadata, manifest, context = _load_marked(args.input, args.context)
    report = watermark.verify(state, key, context, manifest=manifest)
    signature = None
    if public_key is not None:
        restored = None
        if report.verdict == watermark.TAMPERED and report.recoverable:
            restored, _ = watermark.recover(state, key, context, manifest=manifest)
        signature = check_signature(state, metadata.get(SIGNATURE_KEY), public_key, context, restored)
    _print_report(report, args.json, "verify", context, signature)
    return 0 if report.intact and (signature is None or signature.valid) else 1


def _recover(args) -> int:
    _check_output(args.output, args.force, args.input)
    key = load_secret(args.key)
    state, _, manifest, context = _load_marked(args.input, args.context)
    restored, report = watermark.recover(state, key, context, manifest=manifest)
    if report.verdict == watermark.NOT_WATERMARKED:  # nothing to restore from: write no output
        _print_report(report, args.json, "recover", context)
        return 1
    k = json.loads(manifest)["k"] if manifest else watermark.DEFAULT_K
    metadata = {watermark.MANIFEST_KEY: watermark.manifest_of(restored, k)}
    if context:
        metadata[CONTEXT_KEY] = context
    modelio.save_state(args.output, restored, metadata)
    _print_report(report, args.json, "recover", context)
    return 0 if report.intact else 1
