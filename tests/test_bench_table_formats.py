"""benchmarks/bench_table_formats.py --quick, Delta Lake against Iceberg on the lake's work at small
sizes: every step's correctness checks pass on both formats (row counts after concurrent appends
on a folder and on S3, merges by id, concurrent merges, time travel, ingest; no id twice), and
the table it writes says so."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_table_formats.py"


@pytest.mark.slow
def test_quick_run_checks_pass_on_both_formats(tmp_path):
    out = tmp_path / "table_formats.md"
    p = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    text = out.read_text()
    assert "Checks (row counts, no id twice" in text and "all passed." in text
    counts = re.findall(r"^\| \.\.\. rows[^|]*\| ([\d,]+) \(want ([\d,]+)\) \| "
                        r"([\d,]+) \(want ([\d,]+)\) \|", text, re.M)
    # appends on a folder, appends on S3, merge, concurrent merges, time travel
    assert len(counts) == 5
    for delta, want, iceberg, want_again in counts:
        assert delta == want == iceberg == want_again != "0"
    expected = {"2,400", "3,000", "1,000", "400"}  # 6 x 2 x 200; 2,000 + 1,000; 2.5 x 400; 2 x 200
    assert {c[1] for c in counts} == expected
    assert re.search(r"^\| ingest 20,000 rows in 10 commits \| [\d.]+ s \| [\d.]+ s \|", text,
                     re.M)
