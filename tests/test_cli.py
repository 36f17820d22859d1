"""The `bench` command end to end, as a user runs it (subprocesses, real exit codes)."""
import json
import os
import subprocess
import sys

import pytest
import torch


def bench(*args, cwd=None, home=None):
    env = dict(os.environ, CPFS_BENCH_HOME=str(home or "/nonexistent-home-do-not-use"))
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def test_usage_errors_exit_2():
    r = bench("pretrain", "--loss", "mse")
    assert r.returncode == 2 and "Invalid value for '--loss'" in r.stderr
    r = bench("pretrain", "--no-such-option")
    assert r.returncode == 2 and "No such option" in r.stderr


def test_data_folder_without_pairs_exit_1_one_line(tmp_path):
    r = bench("pretrain", "--data", tmp_path, "--out", tmp_path / "run")
    assert r.returncode == 1
    assert "no frame/flow pairs found" in r.stderr and "bench flow --videos" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_world_flow_pretrain_all_losses(tmp_path):
    r = bench("world", "videos", "--out", tmp_path / "world", "--clips", "2", "--frames", "5")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "world" / "videos").iterdir()) == ["clip_000.mp4", "clip_001.mp4"]
    (tmp_path / "world" / "videos" / "zz_broken.mkv").write_bytes(b"garbage")
    r = bench("flow", "--videos", tmp_path / "world" / "videos", "--out", tmp_path / "flow", "--method", "dis-fast")
    assert r.returncode == 0, r.stderr
    assert "2 videos processed" in r.stdout and "1 failed" in r.stdout and "zz_broken" in r.stderr
    manifest = json.loads((tmp_path / "flow" / "manifest.json").read_text())
    assert sum(v["pairs"] for v in manifest["videos"]) == 8
    for loss in ("kta", "ce", "ce-rev", "direct-cls"):
        out = tmp_path / f"run-{loss}"
        r = bench("pretrain", "--loss", loss, "--data", tmp_path / "flow", "--out", out, "--iters", 2,
                  "--batch-size", 2, "--pixels", 32, "--snapshot-every", 1)
        assert r.returncode == 0, r.stderr
        assert f"pretrain {loss}: steps 0->2" in r.stdout
        ckpt = torch.load(out / "last.pt", weights_only=True)
        assert ckpt["loss"] == loss and ckpt["step"] == 2
        assert (out / "step_000001.pt").exists() and len((out / "log.jsonl").read_text().splitlines()) == 2
    r = bench("pretrain", "--loss", "kta", "--data", tmp_path / "flow", "--out", tmp_path / "run-kta",
              "--iters", 3, "--batch-size", 2, "--pixels", 32, "--resume")
    assert r.returncode == 0 and "steps 2->3" in r.stdout, r.stderr
    r = bench("pretrain", "--loss", "kta", "--arch", "caffenet", "--data", tmp_path / "flow", "--out",
              tmp_path / "run-kta", "--iters", 4, "--resume")
    assert r.returncode == 1 and "cannot resume" in r.stderr


@pytest.mark.slow
def test_flow_fails_when_nothing_processed(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"garbage")
    r = bench("flow", "--videos", tmp_path / "v", "--out", tmp_path / "o")
    assert r.returncode == 1 and "no video could be processed" in r.stderr
