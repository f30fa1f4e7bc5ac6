"""The text checks of the validation query match Python's str.strip() (every whitespace
character, newlines and tabs included) on the strings where they could differ."""

import duckdb
import pytest

from flywheel.annotation.validation import _blank, _longer, _trimmed

CASES = ["", " ", "   ", "a", " a", "a ", " a b ", "\u00a0a\u3000", "\u2003", "\ta\n", "\t",
         "\n", "a\u202f", "é ", " ü", "  a  b  ", "a \u00a0 \u3000", "\u3000\u3000a",
         "\n\n", "\v", "\x85a\u2028", "\x1fb\r\n", "a\nb"]


@pytest.mark.parametrize("text", CASES)
def test_blank_and_trimmed_agree_with_python_strip(text):
    con = duckdb.connect()
    blank, trimmed = con.execute(f"SELECT {_blank('$t')}, {_trimmed('$t')}",
                                 {"t": text}).fetchone()
    assert blank == (text.strip() == "")
    assert trimmed == text.strip()


def test_the_cases_cover_both_outcomes():
    con = duckdb.connect()
    blank = [con.execute(f"SELECT {_blank('$t')}", {"t": t}).fetchone()[0] for t in CASES]
    # "", " ", "   ", "\u2003", "\t", "\n", "\n\n", "\v"
    assert sum(blank) == 8 and not all(blank)


@pytest.mark.parametrize("text,n", [("abc", 3), ("abcd", 3), ("ééé", 3), ("éééé", 3),
                                    ("ééé", 5), ("", 0), (None, 3)])
def test_longer_is_length_over_n(text, n):
    got = duckdb.connect().execute(f"SELECT {_longer('$t', n)}, length($t) > {n}",
                                   {"t": text}).fetchone()
    assert got[0] == bool(got[1])
