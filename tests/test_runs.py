"""bench/runs.py, bench/config.py, bench/files.py: the plumbing every training loop shares."""
import json
import math
import os
import signal
import time
from dataclasses import dataclass

import pytest
import torch

from cpfs_bench.bench.checkpoint import CheckpointError
from cpfs_bench.bench.config import load_config_file, protocol_values, resolve
from cpfs_bench.bench.files import atomic_write_bytes
from cpfs_bench.bench.runs import (
    JsonlLog,
    RunFolder,
    RunInterrupted,
    StopRequests,
    loader_workers,
    resolve_device,
    scheduled_lr,
)


def test_schedules_against_their_formulas():
    assert scheduled_lr("constant", 0.1, 7, 10) == 0.1
    for t in (0, 2.5, 5, 10):
        assert scheduled_lr("cosine", 0.2, t, 10) == pytest.approx(0.1 * (1 + math.cos(math.pi * t / 10)))
    # the probes' protocol: x0.1 at epochs 8, 16, 24 of 28, scaled to any length
    milestones = (8 / 28, 16 / 28, 24 / 28)
    got = [scheduled_lr("step", 0.01, e, 28, milestones) for e in (0, 7.99, 8, 16, 24, 27.9)]
    assert got == pytest.approx([0.01, 0.01, 0.001, 1e-4, 1e-5, 1e-5])
    assert scheduled_lr("step", 0.01, 1.5, 3, milestones) == pytest.approx(0.001)  # 1.5 >= 8/28*3
    with pytest.raises(ValueError, match="unknown schedule"):
        scheduled_lr("linear", 0.1, 0, 1)


def test_devices_and_loader_workers():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="--device 'tpu'"):
        resolve_device("tpu")
    assert loader_workers(None, torch.device("cpu")) == 0 and loader_workers(3, torch.device("cpu")) == 3
    assert loader_workers(None, torch.device("cuda")) == min(8, os.cpu_count() or 1)


def test_run_folder_refuses_overwrite_and_names_resume_differences(tmp_path):
    folder = RunFolder(tmp_path / "r", "pretrain", {"lr": 0.1, "seed": 1, "layers": (1, 2)}, resume=False,
                       must_match=("seed", "layers"))
    assert json.loads(folder.config_path.read_text()) == {"command": "pretrain",
                                                          "config": {"lr": 0.1, "seed": 1, "layers": [1, 2]}}
    with pytest.raises(CheckpointError, match="nothing to resume"):
        RunFolder(tmp_path / "r", "pretrain", {"seed": 1}, resume=True)
    folder.last.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="already holds a run .*--config .*config.json --resume"):
        RunFolder(tmp_path / "r", "pretrain", {"seed": 1}, resume=False)
    with pytest.raises(CheckpointError, match="seed: run has 1, asked 2"):
        RunFolder(tmp_path / "r", "pretrain", {"lr": 0.1, "seed": 2, "layers": (1, 2)}, resume=True,
                  must_match=("seed", "layers"))
    # a tuple and the list config.json holds are the same setting; lr may change on resume
    RunFolder(tmp_path / "r", "pretrain", {"lr": 0.5, "seed": 1, "layers": (1, 2)}, resume=True,
              must_match=("seed", "layers"))


def test_a_setting_an_older_run_lacks_counts_as_its_default(tmp_path):
    """A run saved before `fc_lr_mult` existed resumes when the new setting is at its default, and is refused,
    naming the setting, when it is not."""
    folder = RunFolder(tmp_path / "r", "pretrain", {"seed": 1}, resume=False, must_match=("seed",))
    folder.last.write_bytes(b"x")
    must_match, defaults = ("seed", "fc_lr_mult"), {"seed": 0, "fc_lr_mult": 1.0}
    with pytest.raises(CheckpointError, match="fc_lr_mult: run has 1.0, asked 0.1"):
        RunFolder(tmp_path / "r", "pretrain", {"seed": 1, "fc_lr_mult": 0.1}, resume=True, must_match=must_match,
                  defaults=defaults)
    with pytest.raises(CheckpointError, match="fc_lr_mult: run has None"):  # no default given: refused
        RunFolder(tmp_path / "r", "pretrain", {"seed": 1, "fc_lr_mult": 1.0}, resume=True, must_match=must_match)
    # last, as a resume rewrites config.json; the saved seed still wins over its default
    with pytest.raises(CheckpointError, match="seed: run has 1, asked 0"):
        RunFolder(tmp_path / "r", "pretrain", {"seed": 0, "fc_lr_mult": 1.0}, resume=True, must_match=must_match,
                  defaults=defaults)
    RunFolder(tmp_path / "r", "pretrain", {"seed": 1, "fc_lr_mult": 1.0}, resume=True, must_match=must_match,
              defaults=defaults)


def test_jsonl_log_fresh_and_resumed(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"val": 1}\n{"step": 4, "tor')
    log = JsonlLog(path, resume_at=2)
    log.write({"step": 3, "new": True})
    log.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"step": 1}, {"step": 2},
                                                                           {"step": 3, "new": True}]
    JsonlLog(path).close()  # a fresh run
    assert path.read_text() == ""


def test_stop_requests_on_signal_and_wall_time(tmp_path):
    folder = RunFolder(tmp_path, "pretrain", {}, resume=False)
    with StopRequests(folder, save_minutes=0.001) as stop:
        assert not stop.save_due() and stop.save_due(forced=True)
        time.sleep(0.08)
        assert stop.save_due() and not stop.save_due()  # the clock restarts at each save
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.save_due()
        with pytest.raises(RunInterrupted, match="before any state was saved"):
            stop.raise_if_requested("step 1")
        folder.last.write_bytes(b"x")
        with pytest.raises(RunInterrupted, match="SIGTERM received: stopped after step 1, state saved"):
            stop.raise_if_requested("step 1")
        with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


@dataclass(frozen=True)
class Cfg:
    epochs: int = 28
    batch_size: int = 256
    lr: float = 0.01
    out: str = "x"
    preset: str | None = None


def test_resolve_never_overrides_typed_values_and_records_every_difference():
    protocol = protocol_values(Cfg, ("epochs", "batch_size", "lr"))
    presets = {"smoke": {"epochs": 3, "batch_size": 32}}
    cfg, dev = resolve(Cfg(epochs=5, preset="smoke"), presets, {"epochs"}, protocol)
    assert (cfg.epochs, cfg.batch_size) == (5, 32) and dev == {"epochs": 5, "batch_size": 32, "preset": "smoke"}
    with pytest.raises(ValueError, match="unknown preset 'fast'; choose from \\['smoke'\\]"):
        resolve(Cfg(preset="fast"), presets, (), protocol)
    cfg, dev = resolve(Cfg(lr=0.1), None, {"lr"}, protocol)
    assert dev == {"lr": 0.1}  # typed, and still a deviation


def test_config_file_round_trip_and_errors(tmp_path):
    RunFolder(tmp_path / "r", "eval linear-probe", {"epochs": 3, "layers": ["conv1"], "unknown": 1}, resume=False)
    assert load_config_file(tmp_path / "r" / "config.json", Cfg, "eval linear-probe") == {"epochs": 3}
    with pytest.raises(ValueError, match="written by `bench eval linear-probe`, not `bench pretrain`"):
        load_config_file(tmp_path / "r" / "config.json", Cfg, "pretrain")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not a cpfs-bench run config"):
        load_config_file(tmp_path / "bad.json", Cfg, "pretrain")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "a" / "f.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one" and sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]
