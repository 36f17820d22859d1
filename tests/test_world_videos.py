"""bench/world/videos.py: the embedded video world and its ground-truth flow."""
import cv2
import numpy as np

from cpfs_bench.bench.flowio import read_flow_png
from cpfs_bench.bench.world.layers import ground_truth_flow, render_frame
from cpfs_bench.bench.world.videos import VideoWorldConfig, make_clip_layers
from cpfs_bench.pretrain.extract import VideoSource, read_frames


def test_ground_truth_flow_warps_next_frame_onto_this_one():
    cfg = VideoWorldConfig(seed=5)
    layers, _ = make_clip_layers(np.random.default_rng([5, 0]), cfg)
    assert any(layer.joint is not None and layer.joint.speed > 0 for layer in layers)  # swinging parts
    assert layers[0].camera is not None and layers[0].camera.velocity != (0.0, 0.0)  # the camera moves
    frame0, owner = render_frame(layers, 3, cfg.height, cfg.width)
    frame1, owner1 = render_frame(layers, 4, cfg.height, cfg.width)
    flow = ground_truth_flow(layers, owner, 3)
    assert np.abs(flow).max() > 0.5  # things move
    ys, xs = np.mgrid[0:cfg.height, 0:cfg.width].astype(np.float32)
    warped = cv2.remap(frame1, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR)
    # compare where the pixel stays visible and in view: same owner at both ends, away from edges
    tx, ty = np.rint(xs + flow[..., 0]).astype(int), np.rint(ys + flow[..., 1]).astype(int)
    inside = (tx >= 2) & (tx < cfg.width - 2) & (ty >= 2) & (ty < cfg.height - 2)
    same = np.zeros_like(inside)
    same[inside] = owner1[ty[inside], tx[inside]] == owner[inside]
    edges = cv2.dilate((cv2.Laplacian(owner.astype(np.float32), cv2.CV_32F) != 0).astype(np.uint8), np.ones((5, 5)))
    keep = same & (edges == 0)
    err = np.abs(warped.astype(float) - frame0.astype(float)).mean(2)[keep]
    zero_flow_err = np.abs(frame1.astype(float) - frame0.astype(float)).mean(2)[keep]
    assert keep.mean() > 0.7
    assert err.mean() < 3.0 and err.mean() < 0.2 * zero_flow_err.mean()


def test_world_files_deterministic_and_readable(tiny_world, tmp_path):
    from cpfs_bench.bench.world.videos import write_video_world

    write_video_world(VideoWorldConfig(out=str(tmp_path), seed=3, clips=1, frames=6, workers=1), progress=False)
    for i in range(5):
        a, _ = read_flow_png(tiny_world / "gt_flow" / "clip_000" / f"{i:06d}.png")
        b, _ = read_flow_png(tmp_path / "gt_flow" / "clip_000" / f"{i:06d}.png")
        np.testing.assert_array_equal(a, b)
    frames = list(read_frames(VideoSource("clip_000", str(tiny_world / "videos" / "clip_000.mp4"), "video")))
    assert len(frames) == 6 and frames[0].shape == (240, 320, 3)
    assert not (tiny_world / "gt_flow" / "clip_000" / "000005.png").exists()  # 5 pairs for 6 frames


def test_motion_and_joint_maps_keep_their_fixed_points():
    """A pose maps its pivot to its centre (mirrored or not) and mirrors about it; a joint turns about its pivot."""
    from cpfs_bench.bench.world.layers import Joint, Motion

    for flip in (False, True):
        m = Motion(center0=(50.0, 40.0), angle0=0.3, scale0=2.0, flip=flip).matrix(0, (10.0, 20.0))
        np.testing.assert_allclose(m @ [10, 20, 1], [50, 40, 1], atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(m[:2, :2]), 4.0 * (-1 if flip else 1), atol=1e-12)
    j = Joint(pivot=(5.0, 7.0), amplitude=0.5, speed=0.2).matrix(3)
    np.testing.assert_allclose(j @ [5, 7, 1], [5, 7, 1], atol=1e-12)
