"""common/errors.py: one readable line for any error text an audit record carries."""

from __future__ import annotations

from common.errors import REASON_LIMIT, one_line

RAY_TRACE = """\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=4242, ip=10.0.0.1)
ClientAppException:
Traceback (most recent call last):
  File "/x/flwr/simulation/ray_transport/ray_actor.py", line 50, in run
    out_message = app(message=message, context=context)
                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/client/app.py", line 60, in train
    keys = ClientKeys.load(path)
common.errors.KeyFileError: keys/clients/79/watermark.key: missing
"""


def test_a_traceback_becomes_its_exception_line():
    assert one_line(RAY_TRACE) == "common.errors.KeyFileError: keys/clients/79/watermark.key: missing"


def test_chained_tracebacks_keep_the_last_exception():
    text = ("Traceback (most recent call last):\n  File \"a.py\", line 1, in f\nKeyError: 'x'\n\n"
            "During handling of the above exception, another exception occurred:\n\n"
            "Traceback (most recent call last):\n  File \"b.py\", line 2, in g\nValueError: bad share")
    assert one_line(text) == "ValueError: bad share"


def test_plain_lines_are_joined_and_colour_codes_removed():
    assert one_line("seal check failed\n  tensor \x1b[31mfc.weight\x1b[0m   block 3") == \
        "seal check failed; tensor fc.weight block 3"


def test_long_reasons_are_cut_to_the_limit():
    out = one_line("x" * 5000)
    assert len(out) == REASON_LIMIT and out.endswith("...")
    assert one_line("short") == "short"
    assert "\n" not in one_line(RAY_TRACE * 20) and len(one_line(RAY_TRACE * 20)) <= REASON_LIMIT


def test_local_reason_names_no_local_path():
    from common.errors import local_reason

    exc = FileNotFoundError(2, "No such file or directory", "/srv/hospital-a/patients 2024/site.csv")
    line = local_reason(exc, ["/srv/hospital-a/patients 2024/site.csv"])
    assert line == "FileNotFoundError: [Errno 2] No such file or directory: '<local>'"
    relative = local_reason(ValueError("data/site.csv: only 3 rows\nsee log"), ["data/site.csv"])
    assert relative == "ValueError: <local>: only 3 rows; see log"
    assert "hospital" not in local_reason(OSError("cannot open C:\\\\Users\\\\hospital\\\\x.csv"))
