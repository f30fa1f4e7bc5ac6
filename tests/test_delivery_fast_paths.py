"""Fast paths of reading a delivery, each equal to the general path it skips. A JSONL delivery
with malformed lines is read without a Python parse per line; what it gives
must equal the line-by-line reading, row for row, with the same malformed lines by index."""

import pytest

from flywheel.annotation.delivery import _jsonl_bad_lines, _normalise, read_delivery
from flywheel.annotation.lines import read_lines

MIXED = (
    b'{"prompt": "Hi", "response_a": "x", "response_b": "y", "chosen": "a", "criterion": "safety", '
    b'"annotator": "ann"}\n'
    b'{"prompt": "Hi", "response_a": \n'  # cut off: row 1
    b"\n  \n"  # blank lines are not rows
    b"[1, 2]\n"  # not an object: row 2
    b'"just a string"\r\n'  # row 3
    b'{"prompt": "\xc3\xa9 \\u2028", "response_a": "x", "chosen": "b", "strength": "better"}\r\n'
    b"null\n"  # row 5
    b'{"prompt": "last", "extra": 1}'
)
MALFORMED = {1: '{"prompt": "Hi", "response_a": ', 2: "[1, 2]", 3: '"just a string"',
             5: "null"}


def _both(data: bytes):
    fast = _jsonl_bad_lines(data)
    slow = read_lines(data, "x.jsonl", "jsonl")
    return fast, slow


def test_bad_lines_are_found_and_the_rest_read_as_line_by_line():
    (fast, bad_fast), (slow, bad_slow) = _both(MIXED)
    assert bad_fast == bad_slow == MALFORMED
    rows = _normalise(fast)[0].to_pylist()
    assert rows == _normalise(slow)[0].to_pylist()
    assert len(rows) == 7
    assert rows[4]["prompt"] == "é \u2028" and rows[4]["strength"] == "better"
    assert all(v is None for v in rows[1].values())


def test_read_delivery_takes_that_path_and_keeps_every_row():
    t, malformed = read_delivery(MIXED, "batch.jsonl")
    assert malformed == MALFORMED
    assert t.column("row_index").to_pylist() == list(range(7))
    assert t.column("prompt").to_pylist()[6] == "last"


@pytest.mark.parametrize("data", [
    b'{"strength": "better"}\n{"strength": 3}\nnot json\n',  # a column Arrow cannot type
    b"\xff\xfe not utf-8\n",
])
def test_what_arrow_cannot_read_falls_back_to_line_by_line(data):
    assert _jsonl_bad_lines(data) is None


def test_every_line_malformed():
    fast, bad = _jsonl_bad_lines(b"nope\n[]\n")
    assert bad == {0: "nope", 1: "[]"} and fast.num_rows == 2


def test_malformed_first_and_last_lines():
    data = b'{"a": \n{"prompt": "p1"}\n{"prompt": "p2"}\n{"prompt":'
    (fast, bad_fast), (slow, bad_slow) = _both(data)
    assert bad_fast == bad_slow == {0: '{"a": ', 3: '{"prompt":'}
    assert _normalise(fast)[0].to_pylist() == _normalise(slow)[0].to_pylist()
    assert fast.column("prompt").to_pylist() == [None, "p1", "p2", None]


@pytest.mark.parametrize("text", ["Hi", 'a "quoted" \\ back', "é ü 日本", "tab\there\nnewline",
                                  "\u2028 \x00 \x1f", "\ud800 lone surrogate", "[not a list"])
def test_the_plain_prompt_id_is_the_content_id(text):
    from flywheel.annotation.delivery import _user_prompt_id
    from flywheel.lake.schemas import content_id

    assert _user_prompt_id(text) == content_id("prompt", [{"role": "user", "content": text}])


@pytest.mark.parametrize("msgs", [
    [{"role": "user", "content": 'a "q" é \u2028 \\'}],
    [{"content": "order", "role": "user"}],
    [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
    [{"role": "assistant", "content": "x"}],
])
def test_messages_json_is_json_dumps(msgs):
    import json

    from flywheel.annotation.ingest import _messages_json

    assert _messages_json(msgs) == json.dumps(msgs)
