"""FedSeal's exceptions; the CLI maps them to exit codes in one place (common/cli/__init__.py).
`one_line` turns any error text (a Ray traceback, a multi-line message) into the one readable line
that audit records and replies carry."""

import re

REASON_LIMIT = 300  # characters of an audit reason
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_FRAME = re.compile(r"^(Traceback \(most recent call last\)|File \"|During handling of the above|The above exception"
                    r"|[\^~\s]+$|\|)")


class FedSealError(Exception):
    """Base class of every error FedSeal raises on purpose."""

    exit_code = 1


class InputError(FedSealError):
    """Bad usage or bad input (a file, a flag, a value): exit status 2."""

    exit_code = 2


class KeyFileError(InputError):
    """A key file is missing, garbled, or readable by group/others."""


class TamperError(FedSealError):
    """A check failed: the data is not what was sealed or watermarked (exit status 1)."""


def one_line(text: object, limit: int = REASON_LIMIT) -> str:
    """`text` as one line of at most `limit` characters: colour codes removed; for a traceback, its
    last meaningful line (the exception and its message); otherwise its lines joined with "; "."""
    lines = [line.strip() for line in _ANSI.sub("", str(text)).splitlines()]
    lines = [line for line in lines if line]
    if any(line.startswith(("Traceback", "File \"")) for line in lines):
        meaningful = [line for line in lines if not _FRAME.match(line)]
        lines = meaningful[-1:] or lines[-1:]
    joined = " ".join("; ".join(lines).split())
    return joined if len(joined) <= limit else joined[: limit - 3].rstrip() + "..."


_PATH = re.compile(r"(?:~|\.{1,2})?(?:[\\/][^\s\\/'\",;:()]+)+[\\/]?")


def local_reason(exc: BaseException, local: list[str] = ()) -> str:
    """A site's local failure as the one line it may tell the server: the exception's type and
    message with every local value in `local` (node config: its data path, key folder) and every
    path-like text replaced by `<local>`, so no site path leaves the site."""
    text = f"{type(exc).__name__}: {exc}"
    for value in sorted((v for v in local if len(v) >= 2), key=len, reverse=True):
        text = text.replace(value, "<local>")
    return one_line(_PATH.sub("<local>", text))
