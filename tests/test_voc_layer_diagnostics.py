"""benchmarks/voc_layer_diagnostics.py: the effective rank and the per-class AP it prints, against formulas
written another way (numpy eigenvalues of the covariance; scikit-learn's AP on hand-made scores)."""
import importlib.util
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location(
    "voc_layer_diagnostics", Path(__file__).resolve().parents[1] / "benchmarks" / "voc_layer_diagnostics.py")
diagnostics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(diagnostics)


def test_effective_rank_counts_equal_directions_and_matches_the_covariance_spectrum():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(40, 40)))[0][:, :5]
    x = rng.choice([-1.0, 1.0], size=(400, 5)) @ basis.T  # 5 orthogonal directions, equal variance, mean ~0
    assert abs(diagnostics.effective_rank(x) - 5) < 0.1
    y = rng.normal(size=(300, 20)) * np.linspace(0.1, 3, 20)
    eig = np.clip(np.linalg.eigvalsh(np.cov(y, rowvar=False)), 0, None)
    p = eig / eig.sum()
    assert np.isclose(diagnostics.effective_rank(y), np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()), rtol=1e-6)


def test_mean_ap_leaves_out_difficult_images_and_separable_classes_score_100():
    rng = np.random.default_rng(1)
    labels = rng.choice([1, -1], size=(120, 3))
    labels[:10, 0] = 0  # difficult: neither fit nor scored
    features = labels.astype(float) + 0.01 * rng.normal(size=labels.shape)
    features[:10, 0] = 5.0  # scored as negatives, they would be confident false positives
    assert np.isclose(diagnostics.mean_ap(features, labels, features, labels), 100.0)
