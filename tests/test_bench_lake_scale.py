"""benchmarks/bench_lake_scale.py at a tiny scale: the lake is built in both formats, the ingest,
the mixes and every stage read pass their count checks, and the table reports each target."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_lake_scale.py"


@pytest.mark.slow
def test_tiny_scale_run_passes_its_checks(tmp_path):
    out = tmp_path / "lake_scale.md"
    p = subprocess.run([sys.executable, str(SCRIPT), "--scale", "0.002", "--out", str(out),
                        "--workdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    text = out.read_text()
    # 50 iterations of 2 x 40 pairs, 10 x 10 draws and 20 greedy answers, plus the base's 20
    assert "10,020 samples over 50 iterations" in text
    assert "2,800 comparisons (2,000 delivered in the sample-id form" in text
    assert "All 2,000 rows accepted" in text
    targets = re.findall(r"^\| (1\.|1b\.|2\.|3\.) .*\| (pass|\*\*fail\*\*) \|$", text, re.M)
    assert [t[0] for t in targets] == ["1.", "1b.", "2.", "3."]
    mixes = re.findall(r"^\| (helpfulness|safety) \| ([\d,]+) \| [\d.]+ \|", text, re.M)
    assert [m[0] for m in mixes] == ["helpfulness", "safety"] and all(m[1] != "0" for m in mixes)
    reads = re.findall(r"^\| (.+?) \| ([\d., ]+) \| ([\d,. ]+) \| ([\d, ]+) \|", text, re.M)
    assert len(reads) == 8  # seven stage reads and the earlier whole-table read
    assert reads[-1][0].startswith("before") and reads[-1][3] == "10,020"
    assert not list(tmp_path.glob("bench-lake-scale-*")), "the lakes were left behind"
