"""pretrain/data.py: crops, flips and resizes move the flow with the frame; the sampler resumes exactly."""
import numpy as np

from cpfs_bench.bench.sampling import StepBatchSampler
from cpfs_bench.pretrain.data import random_crop_flip


def affine_flow(h, w, a=1.5, b=0.02, c=-2.0, d=0.03):
    """A known motion field: u = a + b x, v = c + d y (pixels), and the x, y grids."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([a + b * x, c + d * y], 2).astype(np.float32), x, y


def test_crop_and_flip_move_the_flow_with_the_frame():
    h, w, crop = 240, 320, 227
    flow, x, y = affine_flow(h, w)
    image = np.stack([x, y, np.zeros_like(x)], 2)  # each pixel names its source (x, y)
    seen_flip = seen_plain = False
    for seed in range(12):
        img, f, valid = random_crop_flip(image, flow, np.ones((h, w), bool), crop, np.random.default_rng(seed))
        sx, sy = img[..., 0], img[..., 1]  # where each output pixel came from
        flipped = sx[0, 0] > sx[0, -1]
        seen_flip |= flipped
        seen_plain |= not flipped
        # u is the motion in x: mirrored images move the other way; v is untouched
        np.testing.assert_allclose(f[..., 0], (-1 if flipped else 1) * (1.5 + 0.02 * sx), atol=1e-5)
        np.testing.assert_allclose(f[..., 1], -2.0 + 0.03 * sy, atol=1e-5)
        assert img.shape == (crop, crop, 3) and valid.all()
    assert seen_flip and seen_plain


def test_small_frames_are_resized_and_their_flow_scaled():
    h, w, crop = 120, 160, 227  # smaller than the crop: resized up by 227 / 120 first
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0  # a uniform translation
    image = np.zeros((h, w, 3), np.uint8)
    img, f, valid = random_crop_flip(image, flow, np.ones((h, w), bool), crop, np.random.default_rng(1))
    nw, nh = round(w * crop / h), crop
    assert img.shape[:2] == (crop, crop)
    assert np.allclose(np.abs(f[..., 0]), 3.0 * nw / w) and np.allclose(f[..., 1], -2.0 * nh / h)


def test_step_sampler_resumes_with_the_same_batches():
    full = list(StepBatchSampler(10, 3, seed=5, start_step=0, total_steps=9))
    resumed = list(StepBatchSampler(10, 3, seed=5, start_step=4, total_steps=9))
    assert resumed == full[4:]
    items = [i for batch in full[:6] for i, _ in batch]  # 18 samples: epoch 0 whole, then epoch 1
    assert sorted(items[:10]) == list(range(10)) and len(set(items[10:])) == 8
    assert len({s for batch in full for _, s in batch}) == 27  # a fresh augmentation seed per sample
