"""FedSeal's exceptions; the CLI maps them to exit codes in one place (common/cli/__init__.py)."""


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
