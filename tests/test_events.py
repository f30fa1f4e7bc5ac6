"""Batches landing start the reward-model retrain through a deployment trigger on a real
Prefect server: one run per window however many events, at most one training per delivery."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
from servers import wait_until

from flywheel.annotation.ingest import ingest_bytes
from flywheel.flows.annotation import retrain
from flywheel.flows.deploy import annotation_deployments
from flywheel.lake.store import Lake
from flywheel.tasks.events import emit_batch_landed

DEBOUNCE = 8


def _delivery(prompt_ids: list[str], tag: str) -> bytes:
    rows = [{"prompt_id": pid, "response_a": f"A helpful answer {tag} {i}.",
             "response_b": f"No {tag} {i}.", "chosen": "a", "strength": "better",
             "criterion": "helpfulness", "annotator": "ann-1"} for i, pid in enumerate(prompt_ids)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _runs(client_sync, deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client_sync.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


@pytest.fixture
def landed_lake(tiny_config):
    from flywheel.stages.common import ensure_prompts

    lake = Lake.open(tiny_config.lake)
    prompts = [p["id"] for p in ensure_prompts(tiny_config, lake) if p["split"] == "train"]
    return lake, prompts


def test_landed_batches_start_one_debounced_retrain(prefect_server, tiny_config, landed_lake):
    from prefect.client.orchestration import get_client

    lake, prompts = landed_lake
    on_batch, _ = annotation_deployments(tiny_config, debounce_seconds=DEBOUNCE)
    deployment_id = on_batch.apply()
    started = datetime.now(timezone.utc)
    week1 = ingest_bytes(lake, _delivery(prompts, "w1"), "week-1.jsonl").to_dict()
    assert emit_batch_landed(lake.uri, week1)
    with get_client(sync_client=True) as client:
        runs = wait_until(lambda: _runs(client, deployment_id), 60,
                          "the batch-landed event to start a retrain", interval=0.5)
        assert len(runs) == 1, runs
        (run,) = runs
        assert run.parameters["batch_id"] == "week-1"
        assert run.parameters["config"]["lake"] == tiny_config.lake
        # scheduled at the end of the debounce window, so batches landing meanwhile join it
        assert (run.expected_start_time - started).total_seconds() >= DEBOUNCE - 2
        # the same event again, and two more batches landing together: no second run
        assert emit_batch_landed(lake.uri, week1)
        for tag in ("w2", "w3"):
            r = ingest_bytes(lake, _delivery(prompts, tag), f"week-{tag}.jsonl").to_dict()
            assert emit_batch_landed(lake.uri, r)
        time.sleep(4)  # a second run would have been created by now: none may appear
        assert len(_runs(client, deployment_id)) == 1


def test_retrain_trains_once_per_delivery(prefect_server, tiny_config, landed_lake):
    lake, prompts = landed_lake
    ingest_bytes(lake, _delivery(prompts, "w1"), "week-1.jsonl")
    ingest_bytes(lake, _delivery(prompts, "w2"), "week-2.jsonl")
    first = retrain(tiny_config, "week-1")
    assert first["trained"] and first["batches"] == ["week-1", "week-2"]
    # the batches hold helpfulness comparisons only: the safety model is not trained, and why
    # is logged; the helpfulness model is
    (rm,) = lake.rows("reward_models")
    assert rm["criterion"] == "helpfulness" and rm["promoted"]
    assert first["reward_model_ids"] == {"helpfulness": rm["id"], "safety": None}
    assert json.loads(rm["data_mix"])["batches"] == ["week-1", "week-2"]
    again = retrain(tiny_config, "week-2")  # its event arrived late: already trained on
    assert again == {"batch_id": "week-2", "trained": False, "pending": []}
    assert len(lake.rows("reward_models")) == 1


def test_inbox_ingests_files_dropped_in_the_lake_once(prefect_server, tiny_config, landed_lake):
    from flywheel.flows.annotation import inbox

    lake, prompts = landed_lake
    lake.write_bytes("incoming/week-1.jsonl", _delivery(prompts, "w1"))
    lake.write_bytes("incoming/week-2.jsonl.gz", __import__("gzip").compress(
        _delivery(prompts, "w2")))
    lake.write_bytes("incoming/notes.txt", b"not a batch")
    first = inbox(tiny_config)
    assert sorted(r["batch_id"] for r in first) == ["week-1", "week-2"]
    assert [(r["new"], r["event_emitted"]) for r in first] == [(len(prompts), True)] * 2
    again = inbox(tiny_config)  # polling again: the same files are no-ops, no new events
    assert all(r["already_ingested"] and not r["event_emitted"] for r in again)
    assert len(lake.rows("batches")) == 2
    assert len(lake.rows("comparisons")) == 2 * len(prompts)
