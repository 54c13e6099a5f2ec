"""`fedseal` as a whole: a usage mistake is one line on stderr and exit status 2, in every command."""

from __future__ import annotations

import pytest

from common.cli import main


@pytest.mark.parametrize("argv, words", [
    (["simulate", "--dataset", "nope"], "invalid choice: 'nope'"),
    (["simulate", "--secure-mode", "rsa"], "invalid choice: 'rsa'"),
    (["nope"], "invalid choice: 'nope'"),
    ([], "required: COMMAND"),
    (["keys", "init"], "required: DIR"),
    (["verify", "m.safetensors"], "required: --key"),
    (["bench", "watermark", "--params", "many"], "invalid int value"),
])
def test_usage_mistake_is_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and captured.out == ""
    assert lines[0].startswith("fedseal") and ": error: " in lines[0] and words in lines[0]
    assert "usage:" not in captured.err and "--help" in lines[0]
