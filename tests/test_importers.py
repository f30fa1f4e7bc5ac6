"""Importers against the real open-source files in ../shared/data beside the repository (see
its SOURCES.md): one delivery row per record, the rejected ones named, texts checked by hand
against the files."""

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.annotation.importers import (
    DELIVERY_COLUMNS,
    convert,
    detect_format,
    hh_rlhf_rows,
    load_records,
    parse_dialogue,
    ultrafeedback_rows,
    write_delivery,
)
from flywheel.errors import DataError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    pytest.skip(f"the shared data folder {DATA} is not here", allow_module_level=True)
HARMLESS = DATA / "hh_rlhf_harmless_base_test_dev.jsonl.gz"
HELPFUL_BASE = DATA / "hh_rlhf_helpful_base_test.jsonl.gz"
HELPFUL_ONLINE = DATA / "hh_rlhf_helpful_online_test.jsonl.gz"
ULTRAFEEDBACK = DATA / "ultrafeedback_binarized_sample_1200.jsonl.gz"


def _reasons(rows):
    return Counter(r["reject_reason"] for r in rows if r["reject_reason"])


def test_parse_dialogue_splits_turns_and_strips_them():
    text = ("\n\nHuman: Hi there\n\nAssistant:  Hello! How can I help?\n\nHuman: Two lines:\n"
            "a\nb\n\nAssistant: Sure.\n\nAssistant: ")
    assert parse_dialogue(text) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Two lines:\na\nb"},
        {"role": "assistant", "content": "Sure."},
        {"role": "assistant", "content": ""},
    ]
    assert parse_dialogue("Human: no leading blank line") == [
        {"role": "user", "content": "no leading blank line"}]
    with pytest.raises(ValueError, match="no"):
        parse_dialogue("just text, no markers")
    with pytest.raises(ValueError, match="before the first"):
        parse_dialogue("preamble\n\nHuman: hi\n\nAssistant: hello")


def test_hh_record_edge_cases_each_give_one_row():
    """Four hand-made records, four rows: an empty final reply is kept (ingest rejects it as
    empty_response), the rest are named."""
    good = "\n\nHuman: hi\n\nAssistant: hello"
    records = [
        {"chosen": good, "rejected": "\n\nHuman: hi\n\nAssistant: "},
        {"chosen": good, "rejected": "\n\nHuman: hey\n\nAssistant: hello"},
        {"chosen": good, "rejected": good + "\n\nHuman: more?"},
        {"chosen": good},
    ]
    rows = list(hh_rlhf_rows(records, "anthropic-hh-rlhf/helpful-base", "helpfulness"))
    assert [r["reject_reason"] for r in rows] == [
        None, "import_prompt_mismatch", "import_unparseable_dialogue", "import_missing_field"]
    assert (rows[0]["response_a"], rows[0]["response_b"]) == ("hello", "")
    assert rows[1]["response_b"] == "\n\nHuman: hey\n\nAssistant: hello"  # kept as delivered


def test_harmless_base_file():
    """2062 records -> 2062 rows. 5 rejected, all import_prompt_mismatch (records 1124, 1520,
    1745, 1746, 1820): in each, one reply itself contains "\\n\\nAssistant:" (e.g. 1745's
    rejected reply, on snatching purses, goes on with a second "\\n\\nAssistant:" turn that
    starts "Let’s just walk through the steps"), so that dialogue has one more assistant turn
    and its turns before the final reply differ from the other's. Record 0, read by hand from the
    file: 2 user + 2 assistant turns before the final replies, so a 5-message prompt ending with
    the user's "okay some of these do not have anything to do with pens"."""
    rows = convert(str(HARMLESS))
    assert len(rows) == 2062
    assert _reasons(rows) == {"import_prompt_mismatch": 5}
    assert [i for i, r in enumerate(rows) if r["reject_reason"]] == [1124, 1520, 1745, 1746, 1820]
    # a test file by its name (..._test_dev.jsonl.gz): its rows are test rows
    assert {(r["criterion"], r["source"], r["annotator"], r["split"]) for r in rows} == {
        ("safety", "anthropic-hh-rlhf/harmless-base", "anthropic-hh-rlhf", "test")}
    for row in rows:
        if not row["reject_reason"]:
            prompt = json.loads(row["prompt"])
            assert prompt[-1]["role"] == "user" and row["chosen"] == "a"
    first = rows[0]
    prompt = json.loads(first["prompt"])
    assert [m["role"] for m in prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert prompt[0]["content"] == "what are some pranks with a pen i can do?"
    assert prompt[-1]["content"] == "okay some of these do not have anything to do with pens"
    assert first["response_a"].startswith("No, sorry!  All of these involve a pen")
    assert first["response_b"].startswith("There are lots of funny things you can do with pens")
    # 4 chosen replies are empty ("\n\nAssistant: " at the very end): kept, for ingest to reject
    assert sum(r["response_a"] == "" for r in rows if not r["reject_reason"]) == 4


def test_helpful_files():
    """helpful-base: 2354 rows, 9 import_prompt_mismatch, the same cause as in harmless-base
    (e.g. 1166's chosen reply "Umm. Just a second...\\n\\nAssistant: A solar panel should
    cost..."). helpful-online: 1137 rows, 2 import_unparseable_dialogue (785 and 1055): the
    rejected reply goes on with a "\\n\\nHuman:" turn, so that dialogue ends with the user."""
    base, online = convert(str(HELPFUL_BASE)), convert(str(HELPFUL_ONLINE))
    assert (len(base), len(online)) == (2354, 1137)
    assert _reasons(base) == {"import_prompt_mismatch": 9}
    assert _reasons(online) == {"import_unparseable_dialogue": 2}
    assert [i for i, r in enumerate(online) if r["reject_reason"]] == [785, 1055]
    assert {(r["criterion"], r["source"]) for r in base} == {
        ("helpfulness", "anthropic-hh-rlhf/helpful-base")}
    assert {(r["criterion"], r["source"]) for r in online} == {
        ("helpfulness", "anthropic-hh-rlhf/helpful-online")}


def test_ultrafeedback_sample():
    """1200 records: the first 1000 say split "train", the last 200 "eval" (-> test)."""
    rows = convert(str(ULTRAFEEDBACK), limit=None)
    assert len(rows) == 1200 and not _reasons(rows)
    assert Counter(r["split"] for r in rows) == {"train": 1000, "test": 200}
    assert {(r["criterion"], r["annotator"], r["source"]) for r in rows} == {
        ("helpfulness", "ultrafeedback-gpt4", "ultrafeedback-binarized")}
    assert json.loads(rows[0]["prompt"]) == [
        {"role": "user", "content": "how to cook t-bone in the oven"}]
    assert rows[0]["response_a"].startswith("To cook a delicious T-bone steak in the oven")
    assert len(convert(str(ULTRAFEEDBACK), limit=7)) == 7


def test_ultrafeedback_message_lists():
    """HuggingFaceH4 style (prompt text + [user, assistant] lists) and a system + two-turn
    conversation without `prompt`; a third whose `prompt` is not the conversation's end."""
    user = {"role": "user", "content": "Name a prime."}
    records = [
        {"prompt": "Name a prime.",
         "chosen": [user, {"role": "assistant", "content": " 7 "}],
         "rejected": [user, {"role": "assistant", "content": "9"}]},
        {"chosen": [{"role": "system", "content": "Be brief."}, user,
                    {"role": "assistant", "content": "2"}, {"role": "user", "content": "Another?"},
                    {"role": "assistant", "content": "3"}],
         "rejected": [{"role": "system", "content": "Be brief."}, user,
                      {"role": "assistant", "content": "2"},
                      {"role": "user", "content": "Another?"},
                      {"role": "assistant", "content": "4"}]},
        {"prompt": "Something else", "chosen": [user, {"role": "assistant", "content": "7"}],
         "rejected": [user, {"role": "assistant", "content": "9"}]},
    ]
    rows = list(ultrafeedback_rows(records, split="test"))
    assert [r["reject_reason"] for r in rows] == [None, None, "import_prompt_mismatch"]
    assert json.loads(rows[0]["prompt"]) == [user]
    assert (rows[0]["response_a"], rows[0]["response_b"], rows[0]["split"]) == ("7", "9", "test")
    assert [m["content"] for m in json.loads(rows[1]["prompt"])] == [
        "Be brief.", "Name a prime.", "2", "Another?"]
    assert (rows[1]["response_a"], rows[1]["response_b"]) == ("3", "4")


def test_names_tell_format_criterion_and_source():
    assert detect_format("Anthropic/hh-rlhf") == "hh-rlhf"
    assert detect_format(str(HARMLESS)) == "hh-rlhf"
    assert detect_format("trl-lib/ultrafeedback_binarized") == "ultrafeedback"
    with pytest.raises(DataError, match="--format"):
        detect_format("prefs.jsonl")
    with pytest.raises(DataError, match="--criterion"):
        convert("Anthropic/hh-rlhf")  # all four subsets mixed: fails before loading
    rows = convert(str(HARMLESS), criterion="helpfulness", source="my-hh", split="test", limit=2)
    assert [(r["criterion"], r["source"], r["split"]) for r in rows] == [
        ("helpfulness", "my-hh", "test")] * 2


def test_local_files_json_array_and_parquet(tmp_path):
    records = [{"prompt": "p1", "chosen": "c1", "rejected": "r1"},
               {"prompt": "p2", "chosen": "c2", "rejected": "r2"}]
    (tmp_path / "uf.json").write_text(json.dumps(records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "uf.parquet")
    with gzip.open(tmp_path / "uf.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in records) + "\n\n")
    for name in ("uf.json", "uf.parquet", "uf.jsonl.gz"):
        assert list(load_records(str(tmp_path / name))) == records
    with pytest.raises(DataError, match="does not exist"):
        load_records(str(tmp_path / "missing.jsonl.gz"))
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(DataError, match="line 2 is not JSON"):
        list(load_records(str(tmp_path / "bad.jsonl")))


def test_dataset_name_without_network_names_the_fix(tmp_path):
    """Offline and with an empty cache (so it fails at once, not after the Hub's retries), in a
    fresh interpreter since the Hub libraries read these variables when first imported."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path)}
    code = ("from flywheel.errors import DataError\n"
            "from flywheel.annotation.importers import load_records\n"
            "try:\n    load_records('Anthropic/hh-rlhf/harmless-base')\n"
            "except DataError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert "download the files and pass the local path" in done.stdout
    assert "Anthropic/hh-rlhf/harmless-base" in done.stdout


def test_write_delivery_round_trip(tmp_path):
    rows = convert(str(HARMLESS), limit=3)
    path = write_delivery(rows, tmp_path / "out" / "delivery.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    back = [json.loads(line) for line in lines]
    assert back == rows and all(tuple(r) == DELIVERY_COLUMNS for r in back)
