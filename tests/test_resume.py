"""Resume: a stage's cache key covers all the code it runs, so an edit to a function the stage
calls (not only to the task or the stage function) runs it again."""

import shutil
from pathlib import Path

from prefect import flow, task

from flywheel.tasks import annotation, evaluation, policy, reward, sampling
from flywheel.tasks.resume import CodeSource, code_roots, stage_cache

REPO = Path(__file__).resolve().parents[1]


def _copy_roots(dest: Path) -> tuple[Path, ...]:
    """A copy of the installed code's folders (flywheel, flows, tasks, kernels) to edit."""
    copies = []
    for root in code_roots():
        copies.append(dest / root.name)
        shutil.copytree(root, copies[-1], ignore=shutil.ignore_patterns("__pycache__"))
    return tuple(copies)


def _code_policies(policy) -> list[CodeSource]:
    return [p for p in getattr(policy, "policies", [policy]) if isinstance(p, CodeSource)]


def test_the_code_roots_hold_the_library_the_tasks_and_the_kernels():
    roots = code_roots()
    for callee in ("policy/finetune.py", "reward/scoring.py", "stages/rejection_sampling.py"):
        assert any((r / callee).is_file() for r in roots), callee
    for folder in ("tasks", "kernels", "flows"):  # beside flywheel/ in this checkout
        assert REPO / folder in roots
    stage_tasks = [sampling.sample_for_annotation, annotation.annotate, annotation.export_pairs,
                   reward.train_reward_models, policy.rejection_sample, policy.rrhf, policy.ppo,
                   evaluation.evaluate]
    for t in stage_tasks:
        (code,) = _code_policies(t.cache_policy)
        assert code.roots == roots, t.name


def test_editing_a_callee_changes_the_key(tmp_path):
    roots = _copy_roots(tmp_path)
    code = CodeSource(roots=roots)
    before = code.compute_key(None, {}, {})
    assert code.compute_key(None, {}, {}) == before
    finetune = tmp_path / "flywheel" / "policy" / "finetune.py"
    finetune.write_text(finetune.read_text().replace("torch.manual_seed(cfg.seed)",
                                                     "torch.manual_seed(cfg.seed + 1)"))
    assert code.compute_key(None, {}, {}) != before
    kernel = next((tmp_path / "kernels").glob("[!_]*.py"))
    edited = code.compute_key(None, {}, {})
    kernel.write_text(kernel.read_text() + "\n# tuned\n")
    assert code.compute_key(None, {}, {}) != edited


def test_a_stage_runs_again_after_an_edit_to_a_callee(prefect_server, tmp_path):
    """A real task run: the second run of the same inputs is Cached; after an edit to
    flywheel/reward/scoring.py (a function the stage calls, not the stage) it runs again."""
    roots = _copy_roots(tmp_path / "code")
    ran = []

    @task(name="stage-under-test", cache_policy=stage_cache(roots), persist_result=True,
          result_storage=tmp_path / "results", result_serializer="json")
    def stage(iteration: int) -> int:
        ran.append(iteration)
        return iteration

    @flow
    def twice(iteration: int) -> list[str]:
        return [stage(iteration, return_state=True).name for _ in range(2)]

    assert twice(1) == ["Completed", "Cached"] and ran == [1]
    scoring = tmp_path / "code" / "flywheel" / "reward" / "scoring.py"
    scoring.write_text(scoring.read_text() + "\n# a change to how answers are scored\n")
    assert twice(1) == ["Completed", "Cached"] and ran == [1, 1]
    assert twice(1) == ["Cached", "Cached"] and ran == [1, 1]  # unchanged since: no run
