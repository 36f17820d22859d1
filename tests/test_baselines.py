"""baselines/: `bench baseline random` and `bench baseline supervised` write checkpoints every evaluation takes."""
import json

import pytest
import torch

from cpfs_bench.baselines.random_init import write_random_checkpoint
from cpfs_bench.baselines.supervised import SupervisedConfig, resolve_config, run
from cpfs_bench.bench.checkpoint import CheckpointError, load_checkpoint
from cpfs_bench.evaluate.backbone import default_method_name, default_run_name, load_trunk
from cpfs_bench.pretrain.alexnet import build_trunk


def test_random_baseline_is_seeded_and_loads_everywhere(tmp_path):
    a = write_random_checkpoint(tmp_path / "a.pt", seed=3)
    b = write_random_checkpoint(tmp_path / "b.pt", seed=3)
    c = write_random_checkpoint(tmp_path / "c.pt", "caffenet", seed=4)
    ta, tb = load_checkpoint(a)["trunk"], load_checkpoint(b)["trunk"]
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert not torch.equal(ta["conv1.0.weight"], load_checkpoint(write_random_checkpoint(tmp_path / "d.pt", seed=4))
                           ["trunk"]["conv1.0.weight"])
    torch.manual_seed(3)  # the project's own initialisation, under the same seed
    assert torch.equal(ta["conv1.0.weight"], build_trunk("caffenet_bn").state_dict()["conv1.0.weight"])
    trunk, info = load_trunk(c)
    assert info["arch"] == "caffenet" and info["loss"] == "random" and info["step"] == 0
    assert default_method_name(info, c) == "random" and default_run_name(c) == "c"
    with pytest.raises(ValueError, match="is a folder"):
        write_random_checkpoint(tmp_path)


def test_supervised_baseline_run_folder_checkpoint_and_resume_rules(tiny_imagenet, tmp_path):
    cfg = SupervisedConfig(data=str(tiny_imagenet), out=str(tmp_path / "sup"), epochs=2, batch_size=4, lr_step=1)
    summary = run(cfg, progress=False, explicit={"epochs", "batch_size", "lr_step"})
    final = load_checkpoint(tmp_path / "sup" / "final.pt")
    assert final["loss"] == "supervised" and final["step"] == 2 and not final["optimizer"]
    assert final["head"]["weight"].shape == (3, 4096) and len(final["extra"]["classes"]) == 3
    assert final["extra"]["deviations"] == {"epochs": 2, "batch_size": 4, "lr_step": 1}
    log = [json.loads(line) for line in (tmp_path / "sup" / "log.jsonl").read_text().splitlines()]
    assert [r.get("epoch") for r in log] == [1, 2, None] and log[-1]["val_top1"] == summary["val_top1"]
    assert log[0]["lr"] == 0.01 and log[1]["lr"] == pytest.approx(0.001)  # x0.1 after lr_step epochs
    trunk, info = load_trunk(summary["checkpoint"])
    assert info["loss"] == "supervised" and default_method_name(info, summary["checkpoint"]) == "supervised"
    assert default_run_name(summary["checkpoint"]) == "sup"
    with pytest.raises(FileExistsError, match="--resume"):
        run(cfg, progress=False)
    with pytest.raises(CheckpointError, match="lr: run has 0.01, asked 0.1"):
        run(SupervisedConfig(**{**cfg.__dict__, "lr": 0.1, "resume": True}), progress=False)


def test_supervised_preset_never_overrides_typed_values(tmp_path):
    cfg, dev = resolve_config(SupervisedConfig(data=str(tmp_path), preset="smoke", epochs=2), explicit={"epochs"})
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_step, cfg.min_crop_scale) == (2, 32, 0.003, 7, 0.35)
    assert dev == {"epochs": 2, "batch_size": 32, "lr": 0.003, "lr_step": 7, "min_crop_scale": 0.35, "preset": "smoke"}
