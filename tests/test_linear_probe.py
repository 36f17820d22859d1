"""evaluate/linear_probe.py, evaluate/features.py, evaluate/backbone.py."""
import copy
import hashlib
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from cpfs_bench.bench.checkpoint import CheckpointError, save_checkpoint
from cpfs_bench.evaluate.backbone import assert_trunk_unchanged, load_trunk, trunk_fingerprint
from cpfs_bench.evaluate.features import pooled_dims, pooled_features
from cpfs_bench.evaluate.linear_probe import LayerProbes, ProbeConfig, run
from cpfs_bench.pretrain.alexnet import build_trunk
from cpfs_bench.results.store import read_records

EXPECTED_DIMS = {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}
# torchvision's 64-192-384-256-256 AlexNet: 64x12x12, 192x7x7, 384x5x5, 256x6x6, 256x6x6
TORCHVISION_DIMS = {"conv1": 9216, "conv2": 9408, "conv3": 9600, "conv4": 9216, "conv5": 9216}


def interrupt_in_epoch_2(monkeypatch):
    """Ctrl-C (a real SIGINT) once the probes' schedule reaches epoch 2; returns the real probe_lr."""
    import cpfs_bench.evaluate.linear_probe as lp

    real_lr, sent = lp.probe_lr, []

    def lr_then_interrupt(c, epoch_float):
        if epoch_float > 1 and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        return real_lr(c, epoch_float)

    monkeypatch.setattr(lp, "probe_lr", lr_then_interrupt)
    return real_lr


@pytest.mark.parametrize("pooling", ["avg", "bilinear"])
@pytest.mark.parametrize("arch", ["caffenet_bn", "caffenet"])
def test_pooled_feature_sizes(pooling, arch):
    trunk = build_trunk(arch).eval()
    feats = pooled_features(trunk, torch.randn(2, 3, 227, 227), pooling=pooling)
    assert {k: v.shape for k, v in feats.items()} == {k: (2, d) for k, d in EXPECTED_DIMS.items()}
    assert pooled_dims(trunk, crop=227, pooling=pooling) == EXPECTED_DIMS


@pytest.mark.parametrize("arch", ["caffenet_bn", "alexnet"])
def test_frozen_channels_last_trunk_gives_the_same_features(arch):
    from cpfs_bench.evaluate.backbone import freeze
    from cpfs_bench.evaluate.features import pool_layer

    torch.manual_seed(0)
    plain = build_trunk(arch).eval()
    frozen = freeze(copy.deepcopy(plain))
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    x = torch.randn(3, 3, 227, 227)
    with torch.no_grad():  # the plain NCHW trunk, pooled layer by layer
        acts = plain.activations(x, EXPECTED_DIMS)
        expected = {layer: pool_layer(acts[layer], layer, "avg", arch) for layer in EXPECTED_DIMS}
    for layer, feats in pooled_features(frozen, x).items():
        torch.testing.assert_close(feats, expected[layer], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [224, 227])
@pytest.mark.parametrize("pooling", ["avg", "bilinear"])
def test_torchvision_alexnet_trunk(size, pooling):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()
    trunk = build_trunk("alexnet").eval()
    missing, unexpected = trunk.load_state_dict(reference.state_dict(), strict=False)
    assert missing == [] and unexpected == ["classifier.6.weight", "classifier.6.bias"]
    x = torch.randn(2, 3, size, size)
    acts = trunk.activations(x, ("conv1", "conv2", "conv5", "pool5", "fc7"))
    with torch.no_grad():  # the same activations computed through torchvision's own modules
        f = reference.features
        assert torch.equal(acts["conv1"], f[1](f[0](x)))
        assert torch.equal(acts["conv5"], f[:12](x)) and torch.equal(acts["pool5"], f(x))
        fc7 = reference.classifier[:6](torch.flatten(reference.avgpool(f(x)), 1))
        assert torch.equal(acts["fc7"], fc7)
    feats = pooled_features(trunk, x, pooling=pooling)
    assert {k: v.shape for k, v in feats.items()} == {k: (2, d) for k, d in TORCHVISION_DIMS.items()}


def test_probe_learns_a_planted_linear_signal():
    torch.manual_seed(0)
    n, d, classes = 2000, 100, 5
    x = torch.randn(n, d) * 3 + 1  # uncentred, unscaled: the affine-free BatchNorm must handle it
    w = torch.randn(d, classes)
    y = (x @ w).argmax(1)
    probes = LayerProbes({"conv3": d}, classes)
    opt = torch.optim.SGD(probes.parameters(), lr=0.05, momentum=0.9)
    for _ in range(15):
        for i in range(0, 1500, 50):
            loss = torch.nn.functional.cross_entropy(probes({"conv3": x[i:i + 50]})["conv3"], y[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    probes.eval()
    accuracy = (probes({"conv3": x[1500:]})["conv3"].argmax(1) == y[1500:]).float().mean().item()
    assert accuracy > 0.85  # chance 0.2


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    torch.manual_seed(0)
    save_checkpoint(path, arch="caffenet_bn", trunk=build_trunk("caffenet_bn").state_dict(), head={}, loss="random",
                    step=0, config={})
    return path


def test_run_end_to_end_records_and_resume(tiny_imagenet, random_ckpt, tmp_path, monkeypatch):

    import cpfs_bench.evaluate.linear_probe as lp
    from cpfs_bench.bench.checkpoint import CheckpointError
    from cpfs_bench.bench.runs import RunInterrupted

    cfg = dict(ckpt=str(random_ckpt), data=str(tiny_imagenet), epochs=1, batch_size=4, out=str(tmp_path / "run"),
               store=str(tmp_path / "records.jsonl"))
    summary = run(ProbeConfig(**cfg), progress=False, explicit={"epochs", "batch_size"})
    records = read_records(tmp_path / "records.jsonl")
    assert len(records) == 10 and {r["layer"] for r in records} == set(EXPECTED_DIMS)
    for r in records:
        assert r["task"] == "imagenet_linear" and r["metric"] in ("top1", "top5") and r["method"] == "random"
        assert r["extra"]["input_dim"] == EXPECTED_DIMS[r["layer"]] and 0 <= r["value"] <= 100
        assert r["deviations"] == {"epochs": 1, "batch_size": 4}
        assert r["checkpoint_sha256"] == hashlib.sha256(random_ckpt.read_bytes()).hexdigest()
        assert r["run"] == random_ckpt.stem and r["dataset_info"]["classes"] == 3
    assert all(s["top5"] == 100.0 for s in summary["scores"].values())  # 3 classes: top-5 holds all
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["epochs"] == 1
    with pytest.raises(FileExistsError, match="--resume"):
        run(ProbeConfig(**cfg), progress=False)
    with pytest.raises(CheckpointError, match="epochs: run has 1, asked 2"):
        run(ProbeConfig(**{**cfg, "epochs": 2}, resume=True), progress=False)

    # Ctrl-C in the middle of epoch 2: epoch 1's state is kept, the message names the resume command
    real_lr = interrupt_in_epoch_2(monkeypatch)
    two = {**cfg, "epochs": 2, "out": str(tmp_path / "run2")}
    with pytest.raises(RunInterrupted, match=r"SIGINT.*epoch 2.*bench eval linear-probe --config .*run2/config.json --resume"):
        run(ProbeConfig(**two), progress=False)
    monkeypatch.setattr(lp, "probe_lr", real_lr)
    resumed = run(ProbeConfig(**two, resume=True), progress=False)
    assert set(resumed["scores"]) == set(EXPECTED_DIMS)
    log = [json.loads(line) for line in (tmp_path / "run2" / "log.jsonl").read_text().splitlines()]
    assert [entry.get("epoch") for entry in log] == [1, 2, None]  # resuming continues the log, no repeats
    assert log[2]["val"] == resumed["scores"]
    for entry in log[:2]:
        assert set(entry["train_loss"]) == set(EXPECTED_DIMS) and 0 < entry["lr"] <= 0.01  # the last step's lr
        assert all(v > 0 and math.isfinite(v) for v in entry["train_loss"].values())
        assert all(0 <= v <= 100 for v in entry["train_top1"].values())
    assert "figure" not in resumed and not (tmp_path / "run2" / "layers.png").exists()  # the CLI draws it
    assert [r["metric"] for r in resumed["records"]] == ["top1", "top5"] * 5  # what the CLI draws it from


def test_preset_never_overrides_typed_values_and_default_folder(random_ckpt, tmp_path, monkeypatch):
    from cpfs_bench.evaluate.backbone import evaluation_folder
    from cpfs_bench.evaluate.linear_probe import resolve_probe_config

    monkeypatch.setenv("CPFS_BENCH_HOME", str(tmp_path / "home"))
    (tmp_path / "inet").mkdir()
    cfg, dev = resolve_probe_config(ProbeConfig(ckpt="x", data=str(tmp_path / "inet"), preset="smoke", epochs=5),
                                    explicit={"epochs"})
    assert (cfg.epochs, cfg.batch_size) == (5, 32)  # typed 5 kept; the preset's batch applied
    assert dev == {"epochs": 5, "batch_size": 32, "preset": "smoke"}
    cfg, dev = resolve_probe_config(ProbeConfig(ckpt="x", data=str(tmp_path / "inet"), lr=0.01), explicit={"lr"})
    assert dev == {}  # the protocol's own value, typed or not, is no deviation
    assert evaluation_folder("linear-probe", "pretrain-kta", "ab" * 32) == Path("runs/linear-probe-pretrain-kta-abababab")


def test_frozen_trunk_check_catches_a_change(tiny_imagenet, random_ckpt, tmp_path, monkeypatch):
    trunk, _ = load_trunk(random_ckpt)
    fingerprint = trunk_fingerprint(trunk)
    assert_trunk_unchanged(trunk, fingerprint)
    trunk.conv3[1].running_mean += 0.001
    with pytest.raises(RuntimeError, match="conv3.1.running_mean"):
        assert_trunk_unchanged(trunk, fingerprint)


    def forgot_eval_mode(path, device="cpu", frozen=True):  # a classic bug: BN statistics drift in train mode
        t, info = load_trunk(path, device)
        return t.train(), info

    monkeypatch.setattr("cpfs_bench.evaluate.evaluation.load_trunk", forgot_eval_mode)
    with pytest.raises(RuntimeError, match="frozen trunk changed"):
        run(ProbeConfig(ckpt=str(random_ckpt), data=str(tiny_imagenet), epochs=1, batch_size=4,
                        out=str(tmp_path / "run"), store=str(tmp_path / "r.jsonl")), progress=False)


def test_checkpoint_formats(tmp_path):
    trunk = build_trunk("caffenet")
    torch.save(trunk.state_dict(), tmp_path / "plain.pt")
    loaded, info = load_trunk(tmp_path / "plain.pt")
    assert info["arch"] == "caffenet" and info["format"] == "state_dict"
    assert torch.equal(loaded.conv1[0].weight, trunk.conv1[0].weight)
    torch.save({"module." + k: v for k, v in build_trunk("caffenet_bn").state_dict().items()}, tmp_path / "dp.pt")
    assert load_trunk(tmp_path / "dp.pt")[1]["arch"] == "caffenet_bn"
    import torchvision

    reference = torchvision.models.alexnet()
    torch.save(reference.state_dict(), tmp_path / "tv.pt")
    loaded, info = load_trunk(tmp_path / "tv.pt")
    assert info["arch"] == "alexnet" and not loaded.training
    assert torch.equal(loaded.features[10].weight, reference.features[10].weight)
    assert torch.equal(loaded.classifier[4].bias, reference.classifier[4].bias)
    broken = {k: v for k, v in reference.state_dict().items() if k != "features.3.bias"}
    broken["features.8.weight"] = broken["features.8.weight"][:128]
    broken["features.99.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken_tv.pt")
    with pytest.raises(CheckpointError, match=r"broken_tv.pt: does not match a alexnet trunk \(torchvision"
                                              r".*missing keys: "
                                              r"\['features.3.bias'\].*unexpected keys: \['features.99.weight'\].*"
                                              r"wrong shapes: \['features.8.weight \(128, 384, 3, 3\) \(expected "
                                              r"\(256, 384, 3, 3\)\)'\]"):
        load_trunk(tmp_path / "broken_tv.pt")
    caffenet_keys = {k.replace("conv1.0.", "conv1.9."): v for k, v in build_trunk("caffenet").state_dict().items()}
    torch.save(caffenet_keys, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError, match=r"renamed.pt: does not match a caffenet trunk.*missing keys: "
                                              r"\['conv1.0.bias', 'conv1.0.weight'\]"):
        load_trunk(tmp_path / "renamed.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"odd.pt: holds a dict whose keys are \['weights'\]; expected a "
                                              r"cpfs-bench checkpoint .* or a trunk's state_dict"):
        load_trunk(tmp_path / "odd.pt")


def test_trainable_trunk_for_fine_tuning(random_ckpt):
    trunk, info = load_trunk(random_ckpt, frozen=False)
    assert trunk.training and all(p.requires_grad for p in trunk.parameters()) and info["arch"] == "caffenet_bn"
    frozen, _ = load_trunk(random_ckpt)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())


def test_checkpoint_errors_a_user_can_act_on(tmp_path):
    import torchvision

    torch.save({"a": 1}, tmp_path / "dict.pt")
    with pytest.raises(CheckpointError, match=r"dict.pt: holds a dict whose keys are \['a'\]"):
        load_trunk(tmp_path / "dict.pt")
    torch.save(build_trunk("caffenet"), tmp_path / "module.pt")  # a pickled nn.Module
    with pytest.raises(CheckpointError, match=r"module.pt: holds pickled Python objects.*never unpickles code.*"
                                              r"torch.save\(model.state_dict\(\), path\)") as e:
        load_trunk(tmp_path / "module.pt")
    assert "weights_only=False" not in str(e.value)
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(CheckpointError, match=r"notes.txt: not a PyTorch checkpoint \(torch.save writes a zip"):
        load_trunk(tmp_path / "notes.txt")
    data = (tmp_path / "dict.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut.pt: could not be read as a PyTorch checkpoint \(truncated") as e:
        load_trunk(tmp_path / "cut.pt")
    assert "\n" not in str(e.value) and "miniz" not in str(e.value)  # one short line, not torch's paragraph
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match=r"resnet.pt: a state_dict of \d+ tensors .* fits none of the supported "
                                              r"trunks: caffenet_bn: .*caffenet: .*alexnet: ") as e:
        load_trunk(tmp_path / "resnet.pt")
    assert "wrong shapes: []" not in str(e.value)


def test_interrupted_and_resumed_probes_match_an_uninterrupted_run_bit_for_bit(tiny_imagenet, random_ckpt, tmp_path,
                                                                                monkeypatch):
    """A SIGINT within epoch 2, then --resume, ends with the same probes and per-epoch losses as a run never
    stopped: the resume restores the probes, the optimizer, the RNG and the loader's shuffling state
    (extra["loader_rng"]) saved at epoch 1's end."""

    import cpfs_bench.evaluate.linear_probe as lp
    from cpfs_bench.bench.checkpoint import load_checkpoint
    from cpfs_bench.bench.runs import RunInterrupted

    def cfg(name, **kw):
        return ProbeConfig(ckpt=str(random_ckpt), data=str(tiny_imagenet), epochs=3, batch_size=4, workers=0,
                           device="cpu", seed=0, out=str(tmp_path / name), store=str(tmp_path / f"{name}.jsonl"), **kw)

    explicit = ("epochs", "batch_size", "workers")
    run(cfg("a"), progress=False, explicit=explicit)

    real_lr = interrupt_in_epoch_2(monkeypatch)
    with pytest.raises(RunInterrupted, match="epoch 2"):
        run(cfg("b"), progress=False, explicit=explicit)
    monkeypatch.setattr(lp, "probe_lr", real_lr)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 1  # epoch 1's state; epoch 2 is redone
    run(cfg("b", resume=True), progress=False, explicit=explicit)

    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 3 and a["head"].keys() == b["head"].keys()
    for k in a["head"]:
        assert torch.equal(a["head"][k], b["head"][k]), f"head.{k} differs after resume"
    for i, (sa, sb) in enumerate(zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True)):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"]), f"momentum of parameter {i} differs"

    def log(name):
        return [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]

    assert [r.get("epoch") for r in log("b")] == [1, 2, 3, None]
    assert [r.get("train_loss") for r in log("a")] == [r.get("train_loss") for r in log("b")]
    assert log("a")[-1]["val"] == log("b")[-1]["val"]
