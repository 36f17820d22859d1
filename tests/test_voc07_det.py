"""evaluate/voc07_det.py: boxes from the XML through the model's coordinates to the devkit's comp4 files
and back, the training roidb's handling of bad boxes, and a tiny end-to-end run (resume, re-scoring)."""
import json

import numpy as np
import pytest
import torch

from cpfs_bench.baselines.random_init import write_random_checkpoint
from cpfs_bench.bench.voc_format import VOC_CLASSES
from cpfs_bench.bench.world.voc import VOCWorldConfig, write_voc_world
from cpfs_bench.evaluate.boxes import devkit_to_pixels
from cpfs_bench.evaluate.datasets import read_id_list, voc_detection_annotations, voc_year_dir
from cpfs_bench.evaluate.metrics import detection_ap
from cpfs_bench.evaluate.proposals import ProposalFormatError, write_proposals_mat
from cpfs_bench.evaluate.voc07_det import (
    VOCDetConfig,
    read_comp4,
    roi_entries,
    run,
    score_comp4,
    target_statistics,
    trainval_images,
    write_comp4,
)
from cpfs_bench.results.store import read_records


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("det-world")
    write_voc_world(VOCWorldConfig(out=str(root), seed=3, voc07_trainval=8, voc07_test=6, voc12_trainval=2, workers=1),
                    progress=False)
    return root


def test_ground_truth_written_as_detections_scores_ap_100(world, tmp_path):
    """XML (1-based) -> 0-based model boxes -> comp4 files (1-based again) -> AP: perfect detections."""
    annotations = voc_detection_annotations(world, "2007", "test")
    ids = list(annotations)
    detections = []
    for image_id in ids:
        boxes, labels, _ = annotations[image_id]
        pixels = devkit_to_pixels(boxes)
        detections.append({c: np.concatenate([pixels[labels == c - 1], np.ones(((labels == c - 1).sum(), 1))], 1)
                           for c in range(1, 21)})
    write_comp4(tmp_path, ids, detections)
    first = read_comp4(next(p for p in sorted(tmp_path.glob("comp4_det_test_*.txt")) if p.stat().st_size))
    image_id, _, box = first[0]
    assert any(np.array_equal(b, box) for b in annotations[image_id][0])  # exactly the XML's numbers
    ap = score_comp4(tmp_path, annotations)
    present = {name for k, name in enumerate(ap) if any(((lab == k) & ~dif).any()
                                                        for _, lab, dif in annotations.values())}
    assert present and all(ap[name] == pytest.approx(100, abs=1e-9) for name in present)
    assert all(np.isnan(v) for name, v in ap.items() if name not in present)
    # the same boxes one pixel off: IoU 90/110 for a 10-pixel-wide box, still a match at > 0.5
    shifted = [{c: d + [1, 0, 1, 0, 0] for c, d in dets.items()} for dets in detections]
    write_comp4(tmp_path / "shifted", ids, shifted)
    assert all(v == pytest.approx(100, abs=1e-9) for name, v in score_comp4(tmp_path / "shifted", annotations).items()
               if name in present)


def test_roidb_skips_clips_and_drops_with_counts(world):
    cfg = VOCDetConfig(voc=str(world), flip=True)
    annotations = {
        "a": (np.array([[10., 10, 60, 80], [5, 5, 30, 30]]), np.array([2, 7]), np.array([False, True])),
        "b": (np.array([[1., 1, 40, 40]]), np.array([4]), np.array([True])),  # only a difficult object
    }
    ids = read_id_list(voc_year_dir(world, "2007") / "ImageSets" / "Main" / "trainval.txt")[:2]
    annotations = dict(zip(ids, annotations.values()))
    proposals = [np.array([[9., 9, 59, 79], [0, 0, 5000, 20], [30, 30, 20, 40], [100, 100, 150, 150]]),
                 np.zeros((0, 4))]
    entries, counts = roi_entries(world, ids, annotations, proposals, cfg)
    assert counts == {"images_without_objects": 1, "boxes_clipped": 1, "degenerate_dropped": 1,
                      "difficult_left_out": 2}
    plain, mirrored = entries
    assert plain.image_id == ids[0] and not plain.flipped and mirrored.flipped and len(plain.boxes) == 4
    assert plain.boxes[0].tolist() == [9, 9, 59, 79]  # the ground truth first, 0-based
    assert plain.labels[:2].tolist() == [3, 3] and plain.max_overlaps[0] == 1
    assert plain.boxes[2].tolist() == [0, 0, plain.width - 1, 20]  # clipped to the image
    means, stds = target_statistics(entries, 0.5)
    assert means.shape == (21, 4) and stds[3].min() >= 0 and np.all(means[[0, 1, 2]] == 0)


def test_end_to_end_resume_comp4_and_rescoring(world, tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "random.pt", seed=0)
    cfg = VOCDetConfig(ckpt=str(ckpt), voc=str(world), iters=3, train_scales=(227,), test_scale=227,
                       out=str(tmp_path / "run"), store=str(tmp_path / "records.jsonl"), ckpt_every=1,
                       save_predictions=2, score_thresh=0.0)
    explicit = ("iters", "train_scales", "test_scale", "save_predictions", "score_thresh")
    assert run(cfg, progress=False, explicit=explicit, stop_after=1)["stopped_at"] == 1
    out = run(VOCDetConfig(**{**cfg.__dict__, "resume": True}), progress=False, explicit=explicit)
    whole = run(VOCDetConfig(**{**cfg.__dict__, "out": str(tmp_path / "whole"), "store": str(tmp_path / "w.jsonl"),
                                "save_predictions": 0}), progress=False, explicit=explicit)
    a, b = torch.load(out["model"], weights_only=True), torch.load(whole["model"], weights_only=True)
    assert all(torch.equal(a["trunk"][k], b["trunk"][k]) for k in a["trunk"])
    assert all(torch.equal(a["head"][k], b["head"][k]) for k in a["head"])
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [0, 1, 2, 3] and log[0]["training_images"] == 2 * len(
        read_id_list(voc_year_dir(world, "2007") / "ImageSets" / "Main" / "trainval.txt"))

    # the comp4 files, parsed here, re-score to the recorded numbers
    annotations = voc_detection_annotations(world, "2007", "test")
    records = {r["metric"]: r for r in read_records(tmp_path / "records.jsonl")}
    aps = []
    record_classes = [m[3:] for m in records if m.startswith("AP_")]
    for name in record_classes:
        rows = [line.split() for line in (tmp_path / "run" / "comp4" / f"comp4_det_test_{name}.txt").read_text()
                .splitlines()]
        dets = [(r[0], float(r[1]), [float(v) for v in r[2:]]) for r in rows]
        c = VOC_CLASSES.index(name)
        truth = {i: (bx[lab == c], dif[lab == c]) for i, (bx, lab, dif) in annotations.items()}
        aps.append(100 * detection_ap(dets, truth))
        assert records[f"AP_{name}"]["value"] == pytest.approx(aps[-1], abs=1e-9)
    assert record_classes and records["mAP"]["value"] == pytest.approx(np.mean(aps), abs=1e-9)
    assert records["mAP"]["deviations"]["roi_mapping"] == "centres" and records["mAP"]["deviations"]["iters"] == 3
    assert len(list((tmp_path / "run" / "predictions").glob("*.png"))) == 2
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    # --eval-only re-scores the saved model to the same mAP
    again = run(VOCDetConfig(model=out["model"], voc=str(world), test_scale=227, score_thresh=0.0,
                             out=str(tmp_path / "again"), store=str(tmp_path / "again.jsonl")), progress=False,
                explicit=("test_scale", "score_thresh"))
    assert again["mAP"] == pytest.approx(out["mAP"], abs=1e-9)


def test_init_rescale_measures_the_training_images_and_is_recorded(world, tmp_path):
    """--init rescale on a BatchNorm trunk (BatchNorm on running statistics, the default here): the images measured
    are the trainval images the detector trains on (the first --train-images), and the record carries the report."""
    cfg = VOCDetConfig(voc=str(world), train_images=5)
    assert [p.stem for p in trainval_images(cfg)] == read_id_list(
        voc_year_dir(world, "2007") / "ImageSets" / "Main" / "trainval.txt")[:5]
    ckpt = write_random_checkpoint(tmp_path / "random.pt", seed=0)
    cfg = VOCDetConfig(ckpt=str(ckpt), voc=str(world), iters=1, train_scales=(227,), test_scale=227, train_images=5,
                       out=str(tmp_path / "run"), store=str(tmp_path / "records.jsonl"), init="rescale")
    run(cfg, progress=False, explicit=("iters", "train_scales", "test_scale", "train_images", "init"))
    main = next(r for r in read_records(tmp_path / "records.jsonl") if r["metric"] == "mAP")
    assert main["deviations"]["init"] == "rescale" and main["extra"]["init"]["images"] == 5
    assert main["extra"]["init"]["folded_batchnorm"] and main["extra"]["init"]["rounds"] >= 1


def test_proposals_for_another_image_list_are_refused(world, tmp_path):
    ids = read_id_list(voc_year_dir(world, "2007") / "ImageSets" / "Main" / "trainval.txt")
    write_proposals_mat(tmp_path / "voc_2007_trainval.mat", ids[:-1], [np.zeros((1, 4))] * (len(ids) - 1))
    ckpt = write_random_checkpoint(tmp_path / "random.pt", seed=0)
    with pytest.raises(ProposalFormatError, match=r"voc_2007_trainval\.mat.*do not match .*trainval\.txt"):
        run(VOCDetConfig(ckpt=str(ckpt), voc=str(world), proposals=str(tmp_path), iters=1, out=str(tmp_path / "r"),
                         store=str(tmp_path / "s.jsonl")), progress=False, explicit=("iters",))


def test_proposal_minibatch_samples_from_proposals_and_ground_truth():
    """py-faster-rcnn's proposal_target_layer: ground truth joins the proposals; labels, the foreground / background
    split and the normalised targets checked against formulas written here."""
    from cpfs_bench.evaluate.voc07_det import proposal_minibatch

    gt = np.array([[10.0, 10.0, 59.0, 49.0], [100.0, 20.0, 139.0, 99.0]])
    gt_labels = np.array([3, 15])
    rng = np.random.default_rng(0)
    proposals = np.concatenate([gt[0] + rng.normal(0, 4, (30, 4)), gt[1] + rng.normal(0, 6, (30, 4)),
                                np.sort(rng.uniform(0, 160, (40, 2, 2)), 1).transpose(0, 2, 1).reshape(40, 4)])
    cfg = VOCDetConfig(rois_per_image=64)
    rois, labels, targets = proposal_minibatch(proposals, gt, gt_labels, cfg, np.random.default_rng(1))
    assert len(rois) == len(labels) == len(targets) <= 64
    n_fg = int((labels > 0).sum())
    assert n_fg == 16 and (labels[:n_fg] > 0).all() and (labels[n_fg:] == 0).all()
    for roi, label, target in zip(rois, labels, targets):
        inter_w = np.minimum(roi[2], gt[:, 2]) - np.maximum(roi[0], gt[:, 0]) + 1
        inter_h = np.minimum(roi[3], gt[:, 3]) - np.maximum(roi[1], gt[:, 1]) + 1
        inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)  # noqa: E731
        iou = inter / (area(roi) + area(gt) - inter)
        k = iou.argmax()
        if label:
            assert iou[k] >= 0.5 and label == gt_labels[k]
            w, h = roi[2] - roi[0], roi[3] - roi[1]
            gw, gh = gt[k, 2] - gt[k, 0], gt[k, 3] - gt[k, 1]
            raw = [((gt[k, 0] + gt[k, 2]) - (roi[0] + roi[2])) / 2 / w,
                   ((gt[k, 1] + gt[k, 3]) - (roi[1] + roi[3])) / 2 / h, np.log(gw / w), np.log(gh / h)]
            np.testing.assert_allclose(target, np.array(raw) / [0.1, 0.1, 0.2, 0.2], rtol=1e-9, atol=1e-9)
        else:
            assert 0.1 <= iou[k] < 0.5 and not target.any()


@pytest.mark.long  # ~20-30 s on 2 cores: out of the README suite's 8-minute budget
def test_faster_rcnn_end_to_end_resume_and_eval_only(world, tmp_path):
    """--proposals rpn: the RPN's losses are logged, resume is bit for bit, the deviation is recorded, --eval-only
    proposes with the saved RPN (same mAP), and a Fast R-CNN model cannot be asked for RPN proposals."""
    ckpt = write_random_checkpoint(tmp_path / "random.pt", seed=0)
    cfg = VOCDetConfig(ckpt=str(ckpt), voc=str(world), proposals="rpn", iters=3, train_scales=(227,), test_scale=227,
                       out=str(tmp_path / "run"), store=str(tmp_path / "records.jsonl"), ckpt_every=1, score_thresh=0.0)
    explicit = ("proposals", "iters", "train_scales", "test_scale", "score_thresh")
    assert run(cfg, progress=False, explicit=explicit, stop_after=1)["stopped_at"] == 1
    out = run(VOCDetConfig(**{**cfg.__dict__, "resume": True}), progress=False, explicit=explicit)
    whole = run(VOCDetConfig(**{**cfg.__dict__, "out": str(tmp_path / "whole"), "store": str(tmp_path / "w.jsonl")}),
                progress=False, explicit=explicit)
    a, b = torch.load(out["model"], weights_only=True), torch.load(whole["model"], weights_only=True)
    assert any(k.startswith("rpn.") for k in a["head"])
    assert all(torch.equal(a["trunk"][k], b["trunk"][k]) for k in a["trunk"])
    assert all(torch.equal(a["head"][k], b["head"][k]) for k in a["head"])
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [0, 1, 2, 3]
    assert all(r["loss"] == pytest.approx(r["loss_cls"] + r["loss_bbox"] + r["loss_rpn_cls"] + r["loss_rpn_bbox"],
                                          rel=1e-5) for r in log[1:])
    record = next(r for r in read_records(tmp_path / "records.jsonl") if r["metric"] == "mAP")
    assert record["deviations"]["proposals"].startswith("rpn") and record["extra"]["test_proposals"] == "rpn"
    again = run(VOCDetConfig(model=out["model"], voc=str(world), test_scale=227, score_thresh=0.0,
                             out=str(tmp_path / "again"), store=str(tmp_path / "again.jsonl")), progress=False,
                explicit=("test_scale", "score_thresh"))
    assert again["mAP"] == pytest.approx(out["mAP"], abs=1e-9) and again["deviations"]["proposals"].startswith("rpn")

    fast = run(VOCDetConfig(ckpt=str(ckpt), voc=str(world), iters=1, train_scales=(227,), test_scale=227,
                            out=str(tmp_path / "fast"), store=str(tmp_path / "f.jsonl")), progress=False,
               explicit=("iters", "train_scales", "test_scale"))
    with pytest.raises(ValueError, match="has no RPN"):
        run(VOCDetConfig(model=fast["model"], voc=str(world), proposals="rpn", out=str(tmp_path / "x"),
                         store=str(tmp_path / "x.jsonl")), progress=False, explicit=("proposals",))


def test_embedded_preset_sets_its_own_schedule_and_typed_iters_scale_it(tmp_path):
    """The embedded preset's lr step (90 of its 120 iterations) is not rescaled from the protocol's 50k of 150k;
    --iters typed on top scales the preset's step; a typed --lr-step wins; real data gets the protocol."""
    from cpfs_bench.evaluate.voc07_det import resolve_config

    cfg, dev = resolve_config(VOCDetConfig())
    assert (cfg.iters, cfg.lr_step, cfg.init, cfg.train_scales) == (120, 90, "reinit-fc", (227,))
    assert dev["preset"] == "embedded" and dev["lr_step"] == 90 and dev["init"] == "reinit-fc"
    cfg, dev = resolve_config(VOCDetConfig(iters=240), explicit=("iters",))
    assert (cfg.iters, cfg.lr_step) == (240, 180) and dev["lr_step"] == 180
    cfg, _ = resolve_config(VOCDetConfig(iters=240, lr_step=7), explicit=("iters", "lr_step"))
    assert cfg.lr_step == 7
    cfg, dev = resolve_config(VOCDetConfig(voc=str(tmp_path), iters=1500), explicit=("iters",))
    assert cfg.lr_step == 500 and (dev["iters"], dev["lr_step"]) == (1500, 500) and "preset" not in dev
