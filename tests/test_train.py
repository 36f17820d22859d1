"""pretrain/train.py and bench/checkpoint.py: the training loop, resume, failure handling."""
import json

import pytest
import torch

import cpfs_bench.pretrain.train as train
from cpfs_bench.bench.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cpfs_bench.pretrain.train import PretrainConfig, TrainingDiverged, run


def tiny_config(data, out, **kw):
    base = dict(loss="kta", data=str(data), out=str(out), iters=4, batch_size=2, pixels=64, hidden=32,
                ckpt_every=100, seed=1)
    base.update(kw)
    return PretrainConfig(**base)


def test_resume_is_bit_for_bit(tiny_flow, tmp_path):
    straight = run(tiny_config(tiny_flow, tmp_path / "a"), progress=False)
    assert straight["steps"] == 4
    half = run(tiny_config(tiny_flow, tmp_path / "b"), progress=False, stop_after=2)
    assert half["steps"] == 2 and load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 2
    resumed = run(tiny_config(tiny_flow, tmp_path / "b", resume=True), progress=False)
    assert resumed["start_step"] == 2 and resumed["steps"] == 4
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    for part in ("trunk", "head"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert torch.equal(a["extra"]["sigma"]["log_sigma"], b["extra"]["sigma"]["log_sigma"])
    losses_a = [json.loads(line)["loss"] for line in open(tmp_path / "a" / "log.jsonl")]
    losses_b = [json.loads(line)["loss"] for line in open(tmp_path / "b" / "log.jsonl")]
    assert losses_a == losses_b


def test_checkpoint_contents_and_weights_only(tiny_flow, tmp_path):
    run(tiny_config(tiny_flow, tmp_path, loss="direct-cls", iters=2, snapshot_every=1), progress=False)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["format"] == "cpfs-bench-checkpoint" and ckpt["format_version"] == 1
    assert ckpt["arch"] == "caffenet_bn" and ckpt["loss"] == "direct-cls" and ckpt["step"] == 2
    assert ckpt["config"]["pixels"] == 64 and ckpt["optimizer"]["state"]
    assert ckpt["extra"]["codebook"].shape == (16, 2)
    assert set(ckpt["rng"]) == {"torch_cpu", "torch_cuda", "numpy", "python"}
    snap = torch.load(tmp_path / "step_000001.pt", weights_only=True)
    assert snap["step"] == 1 and not snap["optimizer"]


def test_existing_run_not_overwritten_and_resume_clash(tiny_flow, tmp_path):
    run(tiny_config(tiny_flow, tmp_path, iters=1), progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        run(tiny_config(tiny_flow, tmp_path, iters=1), progress=False)
    with pytest.raises(CheckpointError, match="arch"):
        run(tiny_config(tiny_flow, tmp_path, iters=2, arch="caffenet", resume=True), progress=False)
    with pytest.raises(CheckpointError, match="loss"):
        run(tiny_config(tiny_flow, tmp_path, iters=2, loss="ce", resume=True), progress=False)
    with pytest.raises(CheckpointError, match="seed: run has 1, asked 2"):
        run(tiny_config(tiny_flow, tmp_path, iters=2, seed=2, resume=True), progress=False)
    with pytest.raises(CheckpointError, match="learn_sigma: run has False, asked True.*--config .*config.json --resume"):
        run(tiny_config(tiny_flow, tmp_path, iters=2, learn_sigma=True, resume=True), progress=False)


def test_resume_rejects_foreign_and_future_checkpoints(tiny_flow, tmp_path):
    (tmp_path / "last.pt").parent.mkdir(exist_ok=True)
    torch.save({"state_dict": {}}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="last.pt.*not a cpfs-bench checkpoint"):
        run(tiny_config(tiny_flow, tmp_path, resume=True), progress=False)
    save_checkpoint(tmp_path / "last.pt", arch="caffenet_bn", trunk={}, head={}, loss="kta", step=1, config={})
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        run(tiny_config(tiny_flow, tmp_path, resume=True), progress=False)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_flow, tmp_path, monkeypatch):
    real = train.cpfs_loss
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(train, "cpfs_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="step 2.*last.pt"):
        run(tiny_config(tiny_flow, tmp_path, ckpt_every=1), progress=False)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["trunk"].values() if v.is_floating_point())


def test_bad_data_folder_explains_how_to_make_one(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="bench flow --videos"):
        run(tiny_config(tmp_path / "empty", tmp_path / "out"), progress=False)


def test_unreadable_frame_named(tiny_flow, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_flow, data)
    for f in (data / "clip_000" / "frames").glob("*.jpg"):
        f.write_bytes(b"not a jpeg")
    for f in (data / "clip_001" / "frames").glob("*.jpg"):
        f.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"frames/00000\d.jpg: image could not be decoded"):
        run(tiny_config(data, tmp_path / "out"), progress=False)


def test_run_folder_files_and_weights_only_final(tiny_flow, tmp_path):
    summary = run(tiny_config(tiny_flow, tmp_path, loss="ce", iters=2), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "final.pt", "last.pt", "log.jsonl", "loss.png"]
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    assert summary["checkpoint"] == str(tmp_path / "final.pt")
    assert final["step"] == 2 and not final["optimizer"] and not final["rng"] and final["trunk"]
    assert final["extra"]["sigma_rule"] == "fixed" and final["extra"]["paper_deviations"] == {"learn_sigma": False}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["command"] == "pretrain" and saved["config"]["iters"] == 2 and saved["config"]["data"] == str(tiny_flow)
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in log] == [1, 2]
    for r in log:  # the CE losses log the KL to their target, and every loss the embeddings' spread
        assert 0 <= r["kl"] <= r["loss"] and -1 <= r["mean_cos"] <= 1


def test_sigterm_saves_a_resumable_state_and_resume_is_exact(tiny_flow, tmp_path, monkeypatch):
    import os
    import signal

    from cpfs_bench.bench.runs import RunInterrupted

    straight = run(tiny_config(tiny_flow, tmp_path / "a"), progress=False)
    real = train.scheduled_lr

    def preempt_at_step_2(kind, base, t, total, **kw):
        if t == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as a cluster preempting the job
        return real(kind, base, t, total, **kw)

    monkeypatch.setattr(train, "scheduled_lr", preempt_at_step_2)
    with pytest.raises(RunInterrupted, match=r"SIGTERM received: stopped after step 3, state saved to .*last.pt; "
                                             r"resume with `bench pretrain --config .*config.json --resume`"):
        run(tiny_config(tiny_flow, tmp_path / "b"), progress=False)
    monkeypatch.setattr(train, "scheduled_lr", real)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 3 and not (tmp_path / "b" / "final.pt").exists()
    run(tiny_config(tiny_flow, tmp_path / "b", resume=True), progress=False)
    a, b = load_checkpoint(tmp_path / "a" / "final.pt"), load_checkpoint(tmp_path / "b" / "final.pt")
    assert all(torch.equal(a["trunk"][k], b["trunk"][k]) for k in a["trunk"])
    assert [json.loads(line)["step"] for line in open(tmp_path / "b" / "log.jsonl")] == [1, 2, 3, 4]
    assert straight["steps"] == 4


def test_resume_after_the_last_step_writes_the_missing_final(tiny_flow, tmp_path):
    """Stopped after the last step's last.pt but before final.pt (found by `bench reproduce`): the resume has no
    step to run and still writes final.pt, the same weights."""
    run(tiny_config(tiny_flow, tmp_path), progress=False)
    final = load_checkpoint(tmp_path / "final.pt")
    (tmp_path / "final.pt").unlink()
    again = run(tiny_config(tiny_flow, tmp_path, resume=True), progress=False)
    assert again["first_loss"] is None and again["checkpoint"] == str(tmp_path / "final.pt")
    rewritten = load_checkpoint(tmp_path / "final.pt")
    assert rewritten["step"] == final["step"] and all(torch.equal(final["trunk"][k], rewritten["trunk"][k])
                                                       for k in final["trunk"])


def test_log_starts_fresh_and_resume_drops_steps_after_the_checkpoint(tiny_flow, tmp_path):
    tmp_path.joinpath("log.jsonl").write_text('{"step": 1, "loss": 9}\n{"step": 2, "loss": 9}\n')  # a killed run
    run(tiny_config(tiny_flow, tmp_path), progress=False, stop_after=2)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "log.jsonl")]
    assert len(losses) == 2 and 9 not in losses  # a fresh run starts a fresh log
    with open(tmp_path / "log.jsonl", "a") as f:  # logged after the last save, then lost in a crash
        f.write('{"step": 3, "loss": 9}\n')
    run(tiny_config(tiny_flow, tmp_path, resume=True), progress=False)
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and 9 not in [r["loss"] for r in log]


def test_fc_lr_mult_scales_only_the_fc6_fc7_step(tiny_flow, tmp_path):
    """One Adam step (its first update is lr x lr_mult per weight, whatever the gradient's scale) at fc_lr_mult
    1, 0.5 and ~0: conv1 and the head move alike in all three; fc6/fc7's move at 1 is twice the one at 0.5."""
    trunks = {}
    for mult in (1.0, 0.5, 1e-9):
        run(tiny_config(tiny_flow, tmp_path / str(mult), iters=1, fc_lr_mult=mult), progress=False)
        trunks[mult] = load_checkpoint(tmp_path / str(mult) / "final.pt")["trunk"]
    start = trunks[1e-9]
    for key in trunks[1.0]:
        if key.startswith(("fc6.", "fc7.")) and key.endswith(("weight", "bias")):
            full, half = trunks[1.0][key] - start[key], trunks[0.5][key] - start[key]
            assert full.abs().max() > 1e-5, key
            assert torch.allclose(full, 2 * half, atol=1e-6), key  # float32 rounding near weights of ~1
        else:
            assert torch.equal(trunks[1.0][key], trunks[0.5][key]) and torch.equal(trunks[1.0][key], start[key]), key
    assert json.loads((tmp_path / "0.5" / "config.json").read_text())["config"]["fc_lr_mult"] == 0.5
