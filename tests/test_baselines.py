"""baselines/: `bench baseline random` and `bench baseline supervised` write checkpoints every evaluation takes."""
import json
import math

import pytest
import torch

from cpfs_bench.baselines.random_init import write_random_checkpoint
from cpfs_bench.baselines.supervised import SupervisedConfig, resolve_config, run
from cpfs_bench.bench.checkpoint import CheckpointError, load_checkpoint
from cpfs_bench.evaluate.backbone import default_method_name, default_run_name, load_trunk
from cpfs_bench.pretrain.alexnet import LAYERS, build_trunk, fold_batchnorm


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


@pytest.fixture(scope="module")
def shapes_imagenet(tmp_path_factory):
    """An ImageNet-layout world with 160 training images (magic_init's 10 batches of 16) and 80 held out."""
    from cpfs_bench.bench.world.imagenet import ImageNetWorldConfig, write_imagenet_world

    root = tmp_path_factory.mktemp("rescale-imagenet")
    write_imagenet_world(ImageNetWorldConfig(out=str(root), classes=4, train_per_class=40, val_per_class=20, size=128,
                                             seed=5), progress=False)
    return root


def preactivation_statistics(trunk, batches):
    """{layer: (mean, std) per channel, float64} of every conv / fc output before its ReLU, read with hooks on the
    ReLUs' inputs during the trunk's own forward pass (an independent path from baselines/random_rescaled.py)."""
    from torch import nn

    seen, handles = {}, []
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        relu = next(m for m in getattr(trunk, name) if isinstance(m, nn.ReLU))
        handles.append(relu.register_forward_pre_hook(
            lambda m, inp, name=name: seen.setdefault(name, []).append(inp[0].detach().double().clone())))
    with torch.no_grad():
        for b in batches:
            trunk.activations(b, ("fc7",))
    for h in handles:
        h.remove()
    out = {}
    for name, parts in seen.items():
        x = torch.cat(parts).transpose(0, 1).reshape(parts[0].shape[1], -1)
        out[name] = (x.mean(1), x.std(1, unbiased=False))
    return out


# the plain CaffeNet case (~30 s) runs with the long tests, to keep the README suite within 8 minutes
@pytest.mark.parametrize("arch", ["caffenet_bn", pytest.param("caffenet", marks=pytest.mark.long)])
def test_random_rescaled_channels_have_zero_mean_unit_variance(shapes_imagenet, tmp_path, arch):
    """Every conv / fc channel before its ReLU: mean = bias and std 1 on the images it was fitted on (float32
    precision), and close to that on held-out images. Measured on 80 held-out images (caffenet_bn, seed 0):
    conv channel means 0.10 median, within 0.01..0.20, stds 0.91..1.08; fc6/fc7 means -0.29..0.51, stds 0.76..1.41
    (per-image statistics over only 80 samples)."""
    from cpfs_bench.baselines.random_rescaled import RandomRescaledConfig, write_random_rescaled_checkpoint
    from cpfs_bench.bench.images import image_files, load_batches

    cfg = RandomRescaledConfig(out=str(tmp_path / "rr.pt"), arch=arch, images=str(shapes_imagenet / "train"))
    summary = write_random_rescaled_checkpoint(cfg, progress=False)
    assert summary["images"] == 160
    trunk, info = load_trunk(summary["checkpoint"])
    assert info["arch"] == arch and info["loss"] == "random-rescaled"
    assert default_method_name(info, "x") == "random-rescaled"
    assert load_checkpoint(summary["checkpoint"])["config"]["images_used"] == 160

    fitted, _ = load_batches(image_files(shapes_imagenet / "train"), 10, 16, 227, seed=0)
    for name, (mean, std) in preactivation_statistics(trunk, fitted).items():
        torch.testing.assert_close(mean, torch.full_like(mean, 0.1), atol=2e-3, rtol=0, msg=name)
        torch.testing.assert_close(std, torch.ones_like(std), atol=2e-3, rtol=0, msg=name)

    held_out, _ = load_batches(image_files(shapes_imagenet / "val"), 10, 16, 227, seed=1)
    for name, (mean, std) in preactivation_statistics(trunk, held_out).items():
        print(f"{arch} {name}: held-out mean {mean.median():.3f} [{mean.min():.3f}, {mean.max():.3f}], "
              f"std {std.median():.3f} [{std.min():.3f}, {std.max():.3f}]")
        assert abs(mean.median() - 0.1) < 0.05 and abs(std.median() - 1) < 0.05, name
        spread = 0.3 if name.startswith("conv") else 0.8
        assert (mean - 0.1).abs().max() < spread and ((std - 1).abs().max() < spread), name


def test_random_rescaled_is_seeded_and_takes_the_bias(shapes_imagenet, tmp_path):
    from cpfs_bench.baselines.random_rescaled import RandomRescaledConfig, write_random_rescaled_checkpoint

    def trunk(name, **kw):
        cfg = RandomRescaledConfig(out=str(tmp_path / name), images=str(shapes_imagenet / "train"), batches=2, **kw)
        return load_checkpoint(write_random_rescaled_checkpoint(cfg, progress=False)["checkpoint"])["trunk"]

    a, b, c = trunk("a.pt", seed=1), trunk("b.pt", seed=1), trunk("c.pt", seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.0.weight"], c["conv1.0.weight"])
    zero = trunk("zero.pt", seed=1, bias=0.0)
    # BatchNorm shifts hold -mu / sigma + bias
    # conv1's BatchNorm shift holds -mu / sigma + bias, the same images and weights with either bias
    torch.testing.assert_close(a["conv1.1.bias"] - zero["conv1.1.bias"], torch.full((96,), 0.1), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no image files"):
        write_random_rescaled_checkpoint(RandomRescaledConfig(out=str(tmp_path / "x.pt"), images=str(tmp_path)),
                                         progress=False)


def test_gradient_equalization_equalizes_gradient_to_weight_ratios(shapes_imagenet, tmp_path):
    """magic_init -cs: rounds stop when every layer's RMS(gradient) / RMS(weight) is within 1% (in log) of their
    target; for a fresh random gradient on fc7 the ratios then agree within sampling noise (measured: max / min 1.09,
    before equalising 9.6)."""
    from cpfs_bench.baselines.random_rescaled import RandomRescaledConfig, write_random_rescaled_checkpoint
    from cpfs_bench.bench.images import image_files, load_batches
    from cpfs_bench.pretrain.alexnet import PARAMETER_LAYERS

    cfg = RandomRescaledConfig(out=str(tmp_path / "eq.pt"), arch="caffenet", images=str(shapes_imagenet / "train"),
                               batches=2, equalize_gradients=True)
    summary = write_random_rescaled_checkpoint(cfg, progress=False)
    first, last = summary["equalization"][0], summary["equalization"][-1]
    assert max(first["ratios"].values()) / min(first["ratios"].values()) > 2  # there was something to equalise
    assert 1 < len(summary["equalization"]) <= 10
    assert all(abs(math.log(r) / math.log(last["target"]) - 1) < 0.01 for r in last["ratios"].values())
    trunk = build_trunk("caffenet")
    trunk.load_state_dict(load_checkpoint(summary["checkpoint"])["trunk"])
    trunk.eval()
    batch = load_batches(image_files(shapes_imagenet / "train"), 2, 16, 227, seed=0)[0][0]  # the batch it used
    out = trunk(batch)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(9)))
    ratios = [((getattr(trunk, n)[0].weight.grad ** 2).mean() / (getattr(trunk, n)[0].weight ** 2).mean()).sqrt()
              for n in PARAMETER_LAYERS]
    print(f"fresh-gradient ratio spread {max(ratios) / min(ratios):.3f}")
    assert max(ratios) / min(ratios) < 1.2, ratios


def test_supervised_interrupted_and_resumed_matches_an_uninterrupted_run_bit_for_bit(tiny_imagenet, tmp_path,
                                                                                     monkeypatch):
    """A SIGINT within epoch 2, then --resume, ends with the same final.pt as a run never stopped: the resume
    restores the model, the optimizer, the RNG and the loader's shuffling state (extra["loader_rng"]) saved at
    epoch 1's end."""
    import os
    import signal

    import cpfs_bench.baselines.supervised as sup
    from cpfs_bench.bench.runs import RunInterrupted

    def cfg(name, **kw):
        return SupervisedConfig(data=str(tiny_imagenet), out=str(tmp_path / name), epochs=2, batch_size=6, lr=0.003,
                                workers=0, device="cpu", seed=0, **kw)

    explicit = ("epochs", "batch_size", "lr", "workers")
    run(cfg("a"), progress=False, explicit=explicit)

    real_lr, sent = sup.scheduled_lr, []

    def interrupt_in_epoch_2(schedule, base_lr, t, *args):  # called once per epoch, before its batches
        if t >= 1 and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        return real_lr(schedule, base_lr, t, *args)

    monkeypatch.setattr(sup, "scheduled_lr", interrupt_in_epoch_2)
    with pytest.raises(RunInterrupted, match="batch 1 of epoch 2"):
        run(cfg("b"), progress=False, explicit=explicit)
    monkeypatch.setattr(sup, "scheduled_lr", real_lr)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 1 and not (tmp_path / "b" / "final.pt").exists()
    run(cfg("b", resume=True), progress=False, explicit=explicit)

    a, b = load_checkpoint(tmp_path / "a" / "final.pt"), load_checkpoint(tmp_path / "b" / "final.pt")
    assert a["step"] == b["step"] == 2
    for part in ("trunk", "head"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"

    def log(name):
        return [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]

    assert [r.get("epoch") for r in log("b")] == [1, 2, None]
    assert [r.get("train_loss") for r in log("a")] == [r.get("train_loss") for r in log("b")]
    assert log("a")[-1]["val_top1"] == log("b")[-1]["val_top1"]


def test_fold_batchnorm_keeps_the_eval_function_and_puts_the_scale_in_the_weights():
    """float64 caffenet_bn with non-trivial BatchNorm statistics and affine parameters: every layer's output
    is unchanged after folding; each BatchNorm is then x + beta, and the weights carry gamma / sqrt(var + eps)."""
    torch.manual_seed(0)
    trunk = build_trunk("caffenet_bn").double().eval()
    for m in trunk.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.normal_()
            m.running_var.uniform_(0.2, 3)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.normal_()
    x = torch.randn(2, 3, 227, 227, dtype=torch.float64)
    conv3_weight = trunk.conv3[0].weight.clone()
    bn = trunk.conv3[1]
    expected_scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        before = trunk.activations(x, LAYERS)
        fold_batchnorm(trunk)
        after = trunk.activations(x, LAYERS)
    for name in LAYERS:
        assert torch.allclose(after[name], before[name], rtol=1e-9, atol=1e-9), name
    assert torch.allclose(trunk.conv3[0].weight, conv3_weight * expected_scale.view(-1, 1, 1, 1))
    for m in trunk.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            assert torch.all(m.running_mean == 0) and torch.all(m.weight == 1)
            assert torch.allclose(m.running_var, torch.full_like(m.running_var, 1 - m.eps))
    plain = build_trunk("caffenet")
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    fold_batchnorm(plain)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in state.items())
