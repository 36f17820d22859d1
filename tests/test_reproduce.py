"""bench/reproduce.py (`bench reproduce`): the plan, the refusals, and the smoke preset end to end: stopped in
the middle and rerun it finishes with no record twice; run again it trains nothing and writes the same tables."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from cpfs_bench.bench.reproduce import (
    CPFS_LOSSES,
    EVALUATIONS,
    METHODS,
    Outcome,
    ReproduceConfig,
    ReproduceError,
    check_config,
    claim_folder,
    describe_plan,
    finished_steps,
    marker,
    plan,
    write_readme,
)


def test_plan_covers_every_method_and_evaluation_in_dependency_order(tmp_path):
    steps = plan(ReproduceConfig(out=str(tmp_path)))
    names = [s.name for s in steps]
    assert len(names) == len(set(names))
    for method in METHODS:
        for evaluation in EVALUATIONS:
            assert f"{evaluation}-{method}" in names
    assert {f"viz-{loss}" for loss in CPFS_LOSSES} <= set(names)
    position = {n: i for i, n in enumerate(names)}
    assert all(position[need] < position[s.name] for s in steps for need in s.needs)
    # every evaluation writes its own records file and names its row after the method
    for s in steps:
        if s.kind in EVALUATIONS:
            method = s.argv[s.argv.index("--name") + 1]
            assert s.name == f"{s.kind}-{method}" and s.store.name == f"{s.name}.jsonl"
            assert s.argv[s.argv.index("--store") + 1] == str(s.store)
    default = plan(ReproduceConfig(preset="default", out=str(tmp_path / "d")))
    assert not any("--voc" in s.argv or "--data" in s.argv[2:3] for s in default if s.kind != "flow")


def test_settings_are_checked_and_another_reproduce_is_refused(tmp_path):
    with pytest.raises(ValueError, match="give --voc, --sbd, --imagenet, --videos"):
        check_config(ReproduceConfig(preset="paper"))
    with pytest.raises(ValueError, match="go with --preset paper"):
        check_config(ReproduceConfig(voc=str(tmp_path)))
    claim_folder(ReproduceConfig(out=str(tmp_path / "r"), seed=0))
    claim_folder(ReproduceConfig(out=str(tmp_path / "r"), seed=0, jobs=2))  # jobs may change
    with pytest.raises(ReproduceError, match=r"seed: 0 there, 1 asked"):
        claim_folder(ReproduceConfig(out=str(tmp_path / "r"), seed=1))


@pytest.mark.slow
@pytest.mark.long
def test_smoke_end_to_end_stopped_resumed_and_rerun(tmp_path):
    """The smoke preset for one row, CPFS-KTA (every kind of step: worlds, flow, pretraining, the 5 evaluations,
    Fig. 1; 11 of the 50; the whole plan takes ~8.5 min on 2 cores, measured): SIGTERM once 4 steps are done
    (exit 130), rerun to the end, then once more: nothing runs the third time and the tables are the same."""
    out = tmp_path / "rep"
    methods = ("kta",)
    command = [sys.executable, "-m", "cpfs_bench.bench.cli", "reproduce", "--out", str(out), "--jobs", "2",
               "--methods", ",".join(methods)]
    env = {**os.environ, "CPFS_BENCH_HOME": str(tmp_path / "home")}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    while first.poll() is None and len(list((out / "steps").glob("*.json"))) < 4:
        time.sleep(1)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 130, err[-2000:]
    assert "rerun the same command to continue" in err
    stopped = {p.stem for p in (out / "steps").glob("*.json")}

    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500)
    assert second.returncode == 0, second.stderr[-3000:]
    steps = {p.stem for p in (out / "steps").glob("*.json")}
    assert len(steps) == len(plan(ReproduceConfig(out=str(out), methods=methods))) and stopped < steps
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    keys = Counter((r["task"], r["run"], r.get("layer"), r["metric"]) for r in records)
    assert keys and max(keys.values()) == 1  # no record twice
    assert {r["run"] for r in records} == set(methods)
    assert {r["task"] for r in records} == {"imagenet_linear", "voc07_svm", "voc07_cls", "voc07_det", "voc12_seg"}
    tables = {p.name: p.read_text() for p in (out / "tables").iterdir() if p.suffix != ".png"}
    assert set(tables) == {"tables.txt", "tables.md", "tables.tex", "tables.csv"}
    assert "| ours |" in tables["tables.md"] and "CPFS-KTA" in tables["tables.md"]
    assert [p.name for p in (out / "figures").glob("fig1-*.png")] == ["fig1-kta.png"]
    assert (out / "tables" / "probes.png").exists()
    readme = (out / "README.md").read_text()
    assert "Commit:" in readme and "Hardware:" in readme and "pipeline check" in readme

    third = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"0 steps run, {len(steps)} already done" in third.stdout
    assert {p.name: p.read_text() for p in (out / "tables").iterdir() if p.suffix != ".png"} == tables


def _mark_done(out, steps):
    for s in steps:
        (out / "steps").mkdir(parents=True, exist_ok=True)
        marker(out, s).write_text(json.dumps({"argv": s.argv, "seconds": 1.0, "finished": "2026-01-01 00:00:00"}))
        if s.output is not None:
            s.output.parent.mkdir(parents=True, exist_ok=True)
            s.output.mkdir(exist_ok=True) if s.kind in ("world", "flow") else s.output.write_text("x")


def test_a_step_whose_output_is_gone_reruns_and_so_do_the_steps_that_need_it(tmp_path):
    out = tmp_path / "rep"
    steps = plan(ReproduceConfig(preset="default", out=str(out)))
    _mark_done(out, steps)
    assert finished_steps(out, steps) == ({s.name for s in steps}, {})
    (out / "runs" / "pretrain-ce" / "final.pt").unlink()  # a checkpoint deleted by hand, or not copied along
    shutil.rmtree(out / "data" / "flow")
    done, stale = finished_steps(out, steps)
    assert "final.pt is missing" in stale["pretrain-ce"] and "flow is missing" in stale["flow"]
    for evaluation in EVALUATIONS:
        assert stale[f"{evaluation}-ce"] == "pretrain-ce reruns" and f"{evaluation}-kta" in done
    assert stale["viz-ce"] == "pretrain-ce, flow reruns" and stale["viz-kta"] == "flow reruns"
    assert done == {s.name for s in steps} - set(stale)
    described = describe_plan(steps, done, 2, stale)
    assert "to run again: pretrain-ce reruns" in described and f"{len(done)} already done" in described


def test_readme_lists_steps_of_earlier_invocations_with_their_commits(tmp_path):
    out = tmp_path / "rep"
    first = plan(ReproduceConfig(preset="default", out=str(out), methods=("kta",)))
    _mark_done(out, first)
    sha = "0123456789abcdef" * 2 + "01234567"
    for s in first:
        record = json.loads(marker(out, s).read_text())
        marker(out, s).write_text(json.dumps({**record, "commit": sha + " +uncommitted changes"}))
    later = ReproduceConfig(preset="default", out=str(out), methods=("random",))
    second = plan(later)
    _mark_done(out, second)
    (out / "tables").mkdir()
    (out / "tables" / "tables.md").write_text("| a table |")
    outcome = Outcome(status={s.name: "done" for s in second})
    readme = write_readme(later, second, outcome, {"md": out / "tables" / "tables.md"}, 10.0).read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ") and "`bench" in line]
    assert len(rows) == len({s.name for s in first + second})  # world and flow are in both plans: listed once
    pretrain = next(r for r in rows if r.startswith("| pretrain-kta |"))
    assert "earlier invocation" in pretrain and "0123456789ab +changes" in pretrain
    assert "| done |" in next(r for r in rows if r.startswith("| linear-probe-random |"))
    assert "| a table |" in readme


def test_each_step_records_the_commit_it_started_at(tmp_path, monkeypatch):
    """The tree may change while a long reproduce runs: each marker holds the commit read when its step started."""
    import cpfs_bench.bench.reproduce as reproduce

    commits = iter(["first", "second", "third"])
    monkeypatch.setattr(reproduce, "commit", lambda: next(commits))
    monkeypatch.setattr(reproduce, "_command", lambda step: [sys.executable, "-c", "pass"])
    steps = [reproduce.Step(name="a", argv=["a"], kind="viz"),
             reproduce.Step(name="b", argv=["b"], kind="viz", needs=("a",))]
    outcome = reproduce.execute(ReproduceConfig(preset="smoke", out=str(tmp_path / "rep")), steps, progress=False)
    assert outcome.status == {"a": "done", "b": "done"}
    assert [json.loads(marker(tmp_path / "rep", s).read_text())["commit"] for s in steps] == ["first", "second"]
