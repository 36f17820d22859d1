"""VOC07 per-layer linear SVMs (evaluate/voc07_svm.py): the SVM stage against an independent
scikit-learn pipeline, end to end on a tiny VOC world (records, feature cache), and bad input."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import average_precision_score, precision_recall_curve
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

from cpfs_bench.bench.checkpoint import save_checkpoint
from cpfs_bench.bench.world.voc import VOCWorldConfig, write_voc_world
from cpfs_bench.evaluate.datasets import VOC_CLASSES
from cpfs_bench.evaluate.features import PROBE_LAYERS
from cpfs_bench.evaluate.voc07_svm import GOYAL19_COSTS, PROTOCOL, SVMConfig, row_space_coordinates, run, svm_layer
from cpfs_bench.pretrain.alexnet import build_trunk
from cpfs_bench.results.store import read_records

COSTS = (0.001, 0.1, 1.0, 10.0)


def synthetic_problem(n_train, n_test, dim, classes, seed=0):
    """Non-negative features with a class-dependent component; labels in {1, -1, 0} with some difficult."""
    rng = np.random.default_rng(seed)
    prototypes = np.abs(rng.standard_normal((classes, dim)))
    n = n_train + n_test
    present = rng.random((n, classes)) < 0.3
    x = np.abs(rng.standard_normal((n, dim))) + 0.15 * present @ prototypes
    labels = np.where(present, 1, -1).astype(np.int8)
    labels[present & (rng.random((n, classes)) < 0.2)] = 0
    return x[:n_train].astype(np.float32), labels[:n_train], x[n_train:].astype(np.float32), labels[n_train:]


def all_point_ap(is_positive, scores):
    """VOC all-point AP from sklearn's PR curve: area under the monotone precision envelope."""
    precision, recall, _ = precision_recall_curve(is_positive, scores)
    precision, recall = precision[::-1], recall[::-1]  # recall ascending from (0, 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * envelope[1:]))


def reference_pipeline(train_x, train_labels, test_x, test_labels, costs, folds):
    """The protocol written independently: per class, cross_val_score over the costs, refit, score."""
    xn = train_x.astype(np.float64) / (np.linalg.norm(train_x.astype(np.float64), axis=1, keepdims=True) + 1e-5)
    tn = test_x.astype(np.float64) / (np.linalg.norm(test_x.astype(np.float64), axis=1, keepdims=True) + 1e-5)
    base = LinearSVC(loss="squared_hinge", penalty="l2", dual=len(xn) <= xn.shape[1], class_weight={1: 2, -1: 1},
                     tol=1e-4, max_iter=10_000, random_state=0)
    out = {"cv_ap": [], "best_cost": [], "scores": [], "ap": [], "sklearn_ap": []}
    for k in range(train_labels.shape[1]):
        y = np.where(train_labels[:, k] == 1, 1, -1)  # difficult (0) is a negative in training
        cv = [cross_val_score(clone(base).set_params(C=c), xn, y, cv=folds, scoring="average_precision").mean()
              for c in costs]
        best = costs[int(np.argmax(cv))]
        scores = clone(base).set_params(C=best).fit(xn, y).decision_function(tn)
        keep = test_labels[:, k] != 0  # difficult excluded at test
        out["cv_ap"].append(cv)
        out["best_cost"].append(best)
        out["scores"].append(scores)
        out["ap"].append(all_point_ap(test_labels[keep, k] == 1, scores[keep]))
        out["sklearn_ap"].append(average_precision_score(test_labels[keep, k] == 1, scores[keep]))
    return {k: np.array(v) if k != "best_cost" else v for k, v in out.items()}


def test_row_space_coordinates_keep_inner_products_and_solver_steps():
    train_x, train_labels, test_x, _ = synthetic_problem(60, 30, 500, 3, seed=4)
    train_x, test_x = train_x.astype(np.float64), test_x.astype(np.float64)
    train_r, test_r = row_space_coordinates(train_x, test_x)
    assert train_r.shape == (60, 60) and test_r.shape == (30, 60)
    np.testing.assert_allclose(train_r @ train_r.T, train_x @ train_x.T, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(test_r @ train_r.T, test_x @ train_x.T, rtol=1e-12, atol=1e-9)
    y = np.where(train_labels[:, 0] == 1, 1, -1)
    for cost in (0.01, 1.0, 100.0):  # the dual solver takes the same steps on both
        full = LinearSVC(C=cost, dual=True, class_weight={1: 2, -1: 1}, tol=1e-4, max_iter=10_000,
                         random_state=0).fit(train_x, y)
        reduced = clone(full).fit(train_r, y)
        assert reduced.n_iter_ == full.n_iter_
        np.testing.assert_allclose(reduced.decision_function(test_r), full.decision_function(test_x),
                                   rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dim", [150, 40], ids=["dual", "primal"])
def test_svm_stage_matches_independent_sklearn_pipeline(dim):
    data = synthetic_problem(120, 80, dim, 3)
    ref = reference_pipeline(*data, COSTS, 3)
    ours = svm_layer(*data, costs=COSTS, folds=3, workers=2)
    assert ours["dual"] == (dim >= 120)
    assert ours["skipped"] == {} and ours["notes"] == {}
    np.testing.assert_allclose(ours["cv_ap"], ref["cv_ap"], rtol=0, atol=1e-12)
    assert ours["best_cost"] == ref["best_cost"]
    np.testing.assert_allclose(ours["scores"], ref["scores"].T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours["ap"], ref["ap"], rtol=0, atol=1e-12)
    assert ours["mAP"] == pytest.approx(float(np.mean(ref["ap"])), abs=1e-12)
    # all-point (interpolated) AP is never below sklearn's step-wise AP of the same ranking
    assert np.all(ours["ap"] >= ref["sklearn_ap"] - 1e-12)
    # the worker count does not change anything
    sequential = svm_layer(*data, costs=COSTS, folds=3, workers=1)
    for key in ("ap", "cv_ap", "scores"):
        np.testing.assert_array_equal(sequential[key], ours[key])


def test_svm_stage_skips_classes_without_positives():
    train_x, train_labels, test_x, test_labels = synthetic_problem(60, 40, 80, 4, seed=1)
    train_labels[:, 1] = np.where(train_labels[:, 1] == 1, 0, train_labels[:, 1])  # only difficult in training
    test_labels[:, 2] = -1  # no test positive
    train_labels[:, 3] = -1
    train_labels[0, 3] = 1  # a single training positive: no fold can be scored
    out = svm_layer(train_x, train_labels, test_x, test_labels, costs=COSTS, folds=3, workers=1)
    assert out["skipped"] == {1: "no positive training image", 2: "no positive test image"}
    assert out["best_cost"][1] is None and np.isnan(out["ap"][[1, 2]]).all()
    assert np.isnan(out["cv_ap"][3]).all() and out["best_cost"][3] == 1.0 and 3 in out["notes"]
    assert out["mAP"] == pytest.approx(float(np.mean(out["ap"][[0, 3]])))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny VOC world and a random caffenet_bn checkpoint of the project's format."""
    root = tmp_path_factory.mktemp("svm")
    write_voc_world(VOCWorldConfig(out=str(root / "voc"), voc07_trainval=40, voc07_test=40, voc12_trainval=4,
                                   workers=1), progress=False)
    ckpt = save_checkpoint(root / "random.pt", arch="caffenet_bn", trunk=build_trunk("caffenet_bn").state_dict(),
                           head={}, loss="random", step=0, config={})
    return root, ckpt


def test_end_to_end_records_and_feature_cache(tiny, tmp_path, capsys):
    root, ckpt = tiny
    cfg = SVMConfig(ckpt=str(ckpt), voc=str(root / "voc"), layers=("conv1", "conv5"), costs=(0.1, 1.0),
                    workers=2, cache=str(tmp_path / "cache"), store=str(tmp_path / "records.jsonl"))
    first = run(cfg, progress=False)
    assert not first["cache_hit"]
    assert "feature cache hit" not in capsys.readouterr().err
    records = read_records(tmp_path / "records.jsonl")
    assert len(records) == 2 and [r["layer"] for r in records] == ["conv1", "conv5"]
    for rec in records:
        assert (rec["task"], rec["metric"], rec["unit"], rec["split"]) == ("voc07_svm", "mAP", "percent", "test")
        assert rec["protocol"] == PROTOCOL and rec["method"] == "random"
        assert rec["deviations"] == {"costs": [0.1, 1.0]}
        assert rec["checkpoint"] == str(ckpt.resolve()) and len(rec["checkpoint_sha256"]) == 64
        assert rec["dataset"] == str((root / "voc").resolve())
        assert math.isfinite(rec["value"]) and 0 <= rec["value"] <= 100
        assert rec["value"] == pytest.approx(first["mAP"][rec["layer"]])
        assert set(rec["extra"]["best_costs"]) == set(VOC_CLASSES)
        assert all(c in (0.1, 1.0, None) for c in rec["extra"]["best_costs"].values())
        json.dumps(rec, allow_nan=False)
    assert records[0]["extra"]["feature_dim"] == 96 * 10 * 10 and records[1]["extra"]["feature_dim"] == 256 * 6 * 6
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert cached == ["conv1.npy", "conv1.npy", "conv5.npy", "conv5.npy", "key.json", "key.json"]  # no temp files

    assert records[0]["dataset_info"] == {"name": "embedded voc", "classes": 20, "split": "test",
                                          "images": records[0]["extra"]["test_images"], "embedded": True}
    assert records[0]["run"] == ckpt.stem

    # a preset never overrides costs the user gave; every difference from the protocol is recorded
    typed = run(replace(cfg, preset="smoke"), progress=False, explicit={"costs"})
    assert typed["deviations"] == {"costs": [0.1, 1.0], "preset": "smoke"}
    untyped = run(replace(cfg, preset="smoke", layers=("conv1",)), progress=False)
    assert untyped["deviations"] == {"costs": [0.01, 0.1, 1.0, 10.0], "preset": "smoke"}

    second = run(cfg, progress=False)
    assert second["cache_hit"] and all(all(h.values()) for h in second["cache_hits"].values())
    assert "feature cache hit" in capsys.readouterr().err
    assert second["mAP"] == first["mAP"]
    for layer in cfg.layers:
        assert second["layers"][layer]["best_cost"] == first["layers"][layer]["best_cost"]
        np.testing.assert_array_equal(list(second["layers"][layer]["ap"].values()),
                                      list(first["layers"][layer]["ap"].values()))
    assert len(read_records(tmp_path / "records.jsonl")) == 2 + 2 + 1 + 2


def test_bad_input(tiny, tmp_path):
    root, ckpt = tiny
    assert SVMConfig(ckpt="x").layers == PROBE_LAYERS and SVMConfig(ckpt="x").costs == GOYAL19_COSTS
    assert len(GOYAL19_COSTS) == 26
    with pytest.raises(ValueError, match="conv6"):
        run(SVMConfig(ckpt=str(ckpt), voc=str(root / "voc"), layers=("conv1", "conv6")), progress=False)
    with pytest.raises(ValueError, match="pooling"):
        run(SVMConfig(ckpt=str(ckpt), voc=str(root / "voc"), pooling="max"), progress=False)
    with pytest.raises(ValueError, match="costs"):
        run(SVMConfig(ckpt=str(ckpt), voc=str(root / "voc"), costs=(1.0, -1.0)), progress=False)
    with pytest.raises(ValueError, match="cv_folds"):
        run(SVMConfig(ckpt=str(ckpt), voc=str(root / "voc"), cv_folds=1), progress=False)
    with pytest.raises(FileNotFoundError, match="VOC2007"):
        run(SVMConfig(ckpt=str(ckpt), voc=str(tmp_path), store=str(tmp_path / "r.jsonl")), progress=False)
    assert not (tmp_path / "r.jsonl").exists()


def test_cli_prints_per_class_table(tiny, tmp_path):
    from click.testing import CliRunner

    from cpfs_bench.bench.cli import main

    root, ckpt = tiny
    result = CliRunner().invoke(main, ["eval", "voc07-svm", "--ckpt", str(ckpt), "--voc", str(root / "voc"),
                                       "--layers", "conv1", "--costs", "0.1,1", "--workers", "1",
                                       "--cache", str(tmp_path / "cache"), "--store", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # progress bars go to stderr
    header = lines.index("VOC07 test AP % per class (rows) and layer (columns); blank = class skipped:")
    assert lines[header + 1].split() == ["conv1"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 2:header + 23]}
    assert list(rows) == list(VOC_CLASSES) + ["mAP"]
    record = read_records(tmp_path / "r.jsonl")[0]
    for name in VOC_CLASSES:
        ap = record["extra"]["ap"][name]
        assert rows[name] == ([] if ap is None else [f"{ap:.1f}"])
    assert rows["mAP"] == [f"{record['value']:.1f}"]
