"""evaluate/voc07_cls.py: the reference fine-tuning protocol's pieces, each against an independent
formula, and a tiny end-to-end run (records, score file, resume, frozen layers)."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from cpfs_bench.baselines.random_init import write_random_checkpoint
from cpfs_bench.bench.checkpoint import CheckpointError
from cpfs_bench.bench.world.voc import VOCWorldConfig, write_voc_world
from cpfs_bench.evaluate.datasets import voc_classification_labels
from cpfs_bench.evaluate.voc07_cls import (
    ScaleCropMirror,
    VOCClassifier,
    VOCClsConfig,
    multilabel_loss,
    parameter_groups,
    resolve_config,
    run,
    step_lr,
)
from cpfs_bench.pretrain.alexnet import build_trunk
from cpfs_bench.results.store import read_records


def test_loss_is_the_reference_sigmoid_cross_entropy():
    """The reference layer's forward, in float64: sum over non-ignored labels of
    log(1 + exp(-|f|)) + ((f > 0) - t) f, divided by the batch size."""
    rng = np.random.default_rng(0)
    f = rng.normal(0, 3, (5, 20))
    labels = rng.choice([1, -1, 0], (5, 20), p=[0.3, 0.6, 0.1])
    t = (labels == 1).astype(float)
    mask = (labels != 0).astype(float)
    expected = np.sum((np.log1p(np.exp(-np.abs(f))) + ((f > 0) - t) * f) * mask) / 5
    got = multilabel_loss(torch.tensor(f), torch.tensor(labels)).item()
    assert got == pytest.approx(expected, rel=1e-12)
    # difficult labels carry no gradient
    logits = torch.tensor(f, requires_grad=True)
    multilabel_loss(logits, torch.tensor(labels)).backward()
    assert torch.all(logits.grad[torch.tensor(labels == 0)] == 0) and logits.grad.abs().sum() > 0


def test_schedule_scales_with_iters_unless_the_step_is_typed(tmp_path):
    cfg, dev = resolve_config(VOCClsConfig(voc=str(tmp_path), iters=800))
    assert cfg.lr_step == 100 and dev == {"iters": 800, "lr_step": 100}
    assert [step_lr(cfg, i) for i in (0, 99, 100, 250)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])
    cfg, dev = resolve_config(VOCClsConfig(voc=str(tmp_path), iters=800, lr_step=300), explicit=("iters", "lr_step"))
    assert cfg.lr_step == 300 and dev == {"iters": 800, "lr_step": 300}
    cfg, dev = resolve_config(VOCClsConfig(voc=str(tmp_path)))
    assert cfg.lr_step == 10000 and dev == {}
    with pytest.raises(ValueError, match="train-from"):
        resolve_config(VOCClsConfig(voc=str(tmp_path), train_from="conv3"))


def test_augmentation_scales_pads_with_the_mean_and_repeats_per_seed():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    image = Image.fromarray(np.full((60, 80, 3), 200, np.uint8))
    augment = ScaleCropMirror(mean, std, 0.5, 2.0, 227)
    x = augment(image, torch.Generator().manual_seed(1))
    assert x.shape == (3, 227, 227)
    # 60x80 scaled by at most 2 is smaller than the crop: the rest is padding = the mean colour (0 after
    # normalisation), the image part is (200/255 - mean) / std
    inside = torch.isclose(x, ((200 / 255 - torch.tensor(mean)) / torch.tensor(std)).view(3, 1, 1), atol=1e-5)
    assert inside.all(0).sum() > 0 and (x == 0).all(0).sum() > 0
    assert (inside.all(0) | (x == 0).all(0)).all()
    assert torch.equal(x, augment(image, torch.Generator().manual_seed(1)))
    # scale s ~ U[0.5, 2]: the scaled 60 s x 80 s image lies whole inside the crop, so its area ranges
    # over [0.25, 4] x 4800 pixels
    areas = [int(inside.all(0).sum()) for inside in
             (torch.isclose(augment(image, torch.Generator().manual_seed(k)),
                            ((200 / 255 - torch.tensor(mean)) / torch.tensor(std)).view(3, 1, 1), atol=1e-5)
              for k in range(40))]
    assert 0.25 * 4800 * 0.9 <= min(areas) < 1.5 * 4800 < 2.5 * 4800 < max(areas) <= 4 * 4800 * 1.1


def test_biases_get_twice_the_lr_and_frozen_layers_no_group():
    model = VOCClassifier(build_trunk("caffenet_bn"))
    torch.nn.init.zeros_(model.fc8.weight)
    assert torch.all(model.fc8.bias == 0.1)
    for module in (model.trunk.conv1, model.trunk.conv5):
        module.requires_grad_(False)
    groups = parameter_groups(model, VOCClsConfig())
    names = {id(p): n for n, p in model.named_parameters()}
    weights, biases = ([names[id(p)] for p in g["params"]] for g in groups)
    assert groups[0]["lr_mult"] == 1.0 and groups[1]["lr_mult"] == 2.0
    assert all(n.endswith("bias") for n in biases) and not any(n.endswith("bias") for n in weights)
    assert "fc8.bias" in biases and "fc8.weight" in weights and "trunk.fc6.1.bias" in biases
    assert not any(n.startswith(("trunk.conv1.", "trunk.conv5.")) for n in weights + biases)


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    write_voc_world(VOCWorldConfig(out=str(root), seed=2, voc07_trainval=8, voc07_test=6, voc12_trainval=2,
                                   workers=1), progress=False)
    return root


@pytest.mark.slow
def test_end_to_end_records_scores_and_resume(tiny_voc, tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "random.pt", seed=0)
    cfg = VOCClsConfig(ckpt=str(ckpt), voc=str(tiny_voc), iters=3, batch_size=2, test_crops=2, out=str(tmp_path / "run"),
                       store=str(tmp_path / "records.jsonl"), workers=0, train_from="fc6")
    explicit = ("iters", "batch_size", "test_crops")
    stopped = run(cfg, progress=False, explicit=explicit, stop_after=2)
    assert stopped["stopped_at"] == 2 and not (tmp_path / "run" / "final.pt").exists()
    with pytest.raises(CheckpointError, match="lr"):
        run(VOCClsConfig(**{**cfg.__dict__, "resume": True, "lr": 0.01}), progress=False, explicit=explicit)
    out = run(VOCClsConfig(**{**cfg.__dict__, "resume": True}), progress=False, explicit=explicit)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 2, 3]
    # the resume is exact: the same weights as a run never interrupted
    whole = run(VOCClsConfig(**{**cfg.__dict__, "out": str(tmp_path / "whole"), "store": str(tmp_path / "w.jsonl")}),
                progress=False, explicit=explicit)
    a, b = torch.load(out["model"], weights_only=True), torch.load(whole["model"], weights_only=True)
    assert all(torch.equal(a["trunk"][k], b["trunk"][k]) for k in a["trunk"])
    assert all(torch.equal(a["head"][k], b["head"][k]) for k in a["head"])

    # --train-from fc6: the convolutions (weights and BatchNorm statistics) are the checkpoint's
    final = torch.load(out["model"], weights_only=True)
    start = torch.load(ckpt, weights_only=True)["trunk"]
    assert final["loss"] == "voc07-cls" and final["step"] == 3
    conv = [k for k in start if k.startswith(("conv",))]
    assert conv and all(torch.equal(final["trunk"][k], start[k]) for k in conv)
    assert not torch.equal(final["trunk"]["fc6.0.weight"], start["fc6.0.weight"])

    # the score file: one row per test image, AP recomputed from it as the reference code does
    ids, labels = voc_classification_labels(tiny_voc, "2007", "test")
    with open(out["scores"]) as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "image" and len(rows[0]) == 21 and [r[0] for r in rows[1:]] == ids
    scores = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    aps = []
    for c in range(20):
        keep = labels[:, c] != 0
        y = (labels[keep, c] == 1).astype(float)
        if y.sum():
            aps.append(100 * average_precision_score(y, scores[keep, c] - 1e-5 * y))
    records = read_records(tmp_path / "records.jsonl")
    main = next(r for r in records if r["metric"] == "mAP")
    assert main["task"] == "voc07_cls" and main["value"] == pytest.approx(np.mean(aps), abs=1e-3)
    assert main["deviations"]["iters"] == 3 and main["deviations"]["train_from"] == "fc6"
    per_class = {r["metric"]: r["value"] for r in records if r["metric"].startswith("AP_")}
    assert {"mAP", "mAP_voc07_11pt"} | set(per_class) == {r["metric"] for r in records}
    assert np.mean(list(per_class.values())) == pytest.approx(main["value"])
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0

    # --eval-only re-scores the saved model: the same seeded test views, the same numbers
    again = run(VOCClsConfig(model=out["model"], voc=str(tiny_voc), test_crops=2, batch_size=2, workers=0,
                             store=str(tmp_path / "again.jsonl"), out=str(tmp_path / "again")),
                progress=False, explicit=("test_crops", "batch_size"))
    assert again["mAP"] == pytest.approx(out["mAP"], abs=1e-6)
    record = next(r for r in read_records(tmp_path / "again.jsonl") if r["metric"] == "mAP")
    assert record["checkpoint_sha256"] == main["checkpoint_sha256"] and record["run"] == main["run"]


def test_ten_test_crops_are_distinct_augmented_views_and_scores_are_summed(tiny_voc, tmp_path):
    import shutil

    from cpfs_bench.evaluate.voc07_cls import VOCClassification, test_scores

    voc = shutil.copytree(tiny_voc, tmp_path / "voc")
    augment = ScaleCropMirror((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    dataset = VOCClassification(voc, "2007", "test", augment, crops=10, seed=3)
    # a real VOC image's size, with content everywhere, so every window differs
    noise = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    Image.fromarray(noise).save(voc / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{dataset.ids[0]}.jpg")
    views, labels = dataset[0]
    assert views.shape == (10, 3, 227, 227) and labels.shape == (20,)
    flat = views.flatten(1)
    assert len({v.numpy().tobytes() for v in flat}) == 10  # ten different windows
    assert torch.equal(views, dataset[0][0])  # the same views on every run

    class Probe(torch.nn.Module):  # a fixed linear read-out of the mean colour
        def forward(self, x):
            return x.mean((2, 3)) @ torch.arange(60.0).view(3, 20)

    summed, first = test_scores(Probe(), dataset, batch_size=20, device="cpu", workers=0, progress=False)
    expected = [Probe()(dataset[i][0]).sum(0) for i in range(len(dataset))]
    assert np.allclose(summed, torch.stack(expected).numpy(), rtol=1e-5)
    assert np.allclose(first[0], Probe()(views[:1])[0].numpy(), rtol=1e-5)


def test_init_rescale_is_recorded_refuses_a_resume_with_another_init_and_keeps_batchnorm_folded(tiny_voc, tmp_path):
    """--init rescale --bn-mode eval: the records name both as deviations and carry what the rescaling did; BatchNorm,
    folded into the weights, stays the identity plus a bias through fine-tuning; a resume with another --init is
    refused; without --bn-mode eval a BatchNorm trunk is refused before anything runs. (The tiny world has 8
    trainval images: all are measured.)"""
    ckpt = write_random_checkpoint(tmp_path / "random.pt", seed=0)
    cfg = VOCClsConfig(ckpt=str(ckpt), voc=str(tiny_voc), iters=2, batch_size=2, test_crops=1,
                       out=str(tmp_path / "run"), store=str(tmp_path / "records.jsonl"), workers=0, init="rescale",
                       bn_mode="eval", init_images=16)
    explicit = ("iters", "batch_size", "test_crops", "init", "bn_mode", "init_images")
    with pytest.raises(ValueError, match="random.pt: --init rescale folds .* --bn-mode eval"):
        run(VOCClsConfig(**{**cfg.__dict__, "bn_mode": "train"}), progress=False, explicit=explicit)
    assert not (tmp_path / "run").exists()
    stopped = run(cfg, progress=False, explicit=explicit, stop_after=1)
    with pytest.raises(CheckpointError, match="init"):
        run(VOCClsConfig(**{**cfg.__dict__, "resume": True, "init": "as-is"}), progress=False, explicit=explicit)
    out = run(VOCClsConfig(**{**cfg.__dict__, "resume": True}), progress=False, explicit=explicit)
    assert stopped["stopped_at"] == 1 and out["deviations"]["init"] == "rescale"
    main = next(r for r in read_records(tmp_path / "records.jsonl") if r["metric"] == "mAP")
    assert main["deviations"]["init"] == "rescale" and main["deviations"]["bn_mode"] == "eval"
    init = main["extra"]["init"]
    assert init["folded_batchnorm"] and init["images"] == 8 and set(init["weight_scale"]) == {
        "conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"}
    trunk = torch.load(out["model"], weights_only=True)["trunk"]
    for name in ("conv1", "conv3", "fc7"):
        assert torch.all(trunk[f"{name}.1.running_mean"] == 0) and torch.all(trunk[f"{name}.1.weight"] == 1), name
