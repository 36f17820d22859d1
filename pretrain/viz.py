"""`bench viz`: what a CPFS checkpoint learned, drawn like the paper's Fig. 1.

For one frame (and its flow, when given): the frame, the flow (Middlebury colour wheel, with its key),
the per-pixel embedding projected to RGB by PCA, and for a few pixels p their kernel rows K_phi(p, .)
= cos(phi_p, phi_.) / 4 and, with flow, K_f(p, .) = exp(-|f_p - f_.|^2 / (2 sigma^2)) in the units the
checkpoint was trained in (squashed flow, its sigma). Pixels that move together should light up
together in both. `video_strip` draws the frame / flow / embedding row for several frames of a video,
with one PCA basis for all of them so colours compare across frames.

The frame is prepared as in training (pretrain/data.py), with a centre crop instead of a random one:
frames smaller than the crop are resized up (their flow scaled with them), then crop x crop from the
centre. A direct-cls checkpoint has class logits instead of an embedding; they are L2-normalised and
drawn the same way (stated in the figure)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cpfs_bench.bench.checkpoint import CheckpointError, load_checkpoint
from cpfs_bench.bench.flowio import flow_to_image, read_flow_png
from cpfs_bench.bench.losses import LOSS_SPECS
from cpfs_bench.pretrain.alexnet import build_trunk
from cpfs_bench.pretrain.data import resize_to_cover
from cpfs_bench.pretrain.head import HypercolumnHead
from cpfs_bench.pretrain.losses import Sigma, squash_flow


def load_pretrained(path) -> tuple[torch.nn.Module, HypercolumnHead, dict]:
    """A `bench pretrain` checkpoint -> (trunk, head, info {loss, sigma, squash, crop, mean, std, step}), eval mode.
    CheckpointError naming the file when it holds no CPFS head (a baseline, an evaluation's model)."""
    state = load_checkpoint(path)
    cfg = state.get("config") or {}
    if state.get("loss") not in LOSS_SPECS or not state.get("head"):
        raise CheckpointError(f"{path}: not a `bench pretrain` checkpoint (loss {state.get('loss')!r}, "
                              f"{'no' if not state.get('head') else 'a'} head); viz needs the CPFS embedding head")
    trunk = build_trunk(state["arch"])
    trunk.load_state_dict(state["trunk"])
    spec = LOSS_SPECS[state["loss"]]
    head = HypercolumnHead(trunk.feature_geometry(), cfg.get("hidden", 256),
                           spec.head_outputs(cfg.get("embed_dim", 16), cfg.get("classes", 16)), normalize=spec.kernel)
    head.load_state_dict(state["head"])
    extra = state.get("extra") or {}
    sigma = Sigma(cfg.get("sigma", 0.06), learn=False)
    if "sigma" in extra:
        sigma.load_state_dict(extra["sigma"])
    norm = extra.get("normalization", {})
    info = {"loss": state["loss"], "step": state["step"], "sigma": float(sigma()), "squash": cfg.get("squash", True),
            "crop": cfg.get("crop", 227), "mean": norm.get("mean"), "std": norm.get("std")}
    return trunk.eval(), head.eval(), info


def centre_crop(image: np.ndarray, flow: np.ndarray | None, crop: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint8 frame and (H, W, 2) flow in pixels -> their crop x crop centres, resized up first (flow
    scaled with the image) when the frame is smaller than the crop, as in training."""
    h, w = image.shape[:2]
    if flow is not None and flow.shape[:2] != (h, w):
        raise ValueError(f"the flow is {flow.shape[1]}x{flow.shape[0]} but the frame {w}x{h}")
    image, flow, _ = resize_to_cover(image, flow, None, crop)
    h, w = image.shape[:2]
    y, x = (h - crop) // 2, (w - crop) // 2
    return image[y:y + crop, x:x + crop], None if flow is None else flow[y:y + crop, x:x + crop]


@torch.no_grad()
def dense_embeddings(trunk, head: HypercolumnHead, image: np.ndarray, mean, std, chunk: int = 8192) -> np.ndarray:
    """(S, S, 3) uint8 RGB crop -> (S, S, D) float32 embeddings at every pixel (L2-normalised)."""
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    activations = trunk.activations(x[None], tuple(head.sources))
    size = image.shape[0]
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    positions = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float()[None]
    out = torch.cat([head(activations, positions[:, i:i + chunk]) for i in range(0, positions.shape[1], chunk)], 1)
    return F.normalize(out[0], dim=1).reshape(size, size, -1).numpy()


def pca_basis(embeddings: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(..., D) -> (mean (D,), the k leading principal directions (D, k)) in float64."""
    flat = embeddings.reshape(-1, embeddings.shape[-1]).astype(np.float64)
    mu = flat.mean(0)
    _, _, vt = np.linalg.svd(flat - mu, full_matrices=False)
    return mu, vt[:k].T


def pca_rgb(embeddings: np.ndarray, mu: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, D) -> ((H, W, 3) in [0, 1], lo, hi): projections on the basis, each stretched between its 1st (lo)
    and 99th (hi) percentile."""
    proj = (embeddings.reshape(-1, embeddings.shape[-1]) - mu) @ basis
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return rgb.reshape(*embeddings.shape[:2], 3), lo, hi


def flow_units(flow: np.ndarray, squash: bool) -> np.ndarray:
    """Flow in pixels -> the units the checkpoint's flow kernel used (squashed or pixels)."""
    return squash_flow(torch.from_numpy(flow)).numpy() if squash else flow


def kernel_rows(embeddings: np.ndarray, flow: np.ndarray | None, pixel: tuple[int, int], sigma: float):
    """(K_phi(p, .) (H, W), K_f(p, .) (H, W) or None) for pixel p = (x, y); flow already in kernel units."""
    x, y = pixel
    k_phi = embeddings @ embeddings[y, x] / 4
    if flow is None:
        return k_phi, None
    d2 = ((flow - flow[y, x]) ** 2).sum(-1)
    return k_phi, np.exp(-d2 / (2 * sigma * sigma))


def pick_pixels(flow: np.ndarray | None, size: int, n: int = 3) -> list[tuple[int, int]]:
    """Default pixels to show: with flow, the fastest-moving pixel, the slowest, and one in between (away from the
    border); without, n points on the diagonal."""
    if flow is None:
        return [(int(size * (i + 1) / (n + 1)), int(size * (i + 1) / (n + 1))) for i in range(n)]
    margin = size // 10
    speed = np.linalg.norm(flow, axis=-1)[margin:-margin, margin:-margin]
    order = np.argsort(speed, axis=None)
    picks = [order[-1], order[0], order[len(order) // 2]][:n]
    return [(int(i % speed.shape[1]) + margin, int(i // speed.shape[1]) + margin) for i in picks]


def wheel_key(size: int = 64) -> np.ndarray:
    """The flow colour wheel's key: (size, size, 3) RGB uint8, the colour of each direction at full speed."""
    r = np.linspace(-1, 1, size, dtype=np.float32)
    fx, fy = np.meshgrid(r, r)
    inside = fx ** 2 + fy ** 2 <= 1
    key = flow_to_image(np.stack([fx * inside, fy * inside], -1))[..., ::-1].copy()
    key[~inside] = 255
    return key


def save_figure(fig, out) -> Path:
    """Every panel without ticks, laid out tight, written to `out` (its folder made); returns the path."""
    for ax in fig.axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def read_frame(path) -> np.ndarray:
    """An image file -> (H, W, 3) RGB uint8; ValueError naming the file when it is not an image."""
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except OSError as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


def embedding_figure(ckpt, frame, flow=None, out=None, pixels=None) -> Path:
    """The Fig. 1-style PNG for one frame (and its KITTI flow PNG); returns its path. pixels: [(x, y)] in the
    crop; None picks them from the flow."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    trunk, head, info = load_pretrained(ckpt)
    image = read_frame(frame)
    flow_px = None
    if flow is not None:
        flow_px, _ = read_flow_png(flow)
    image, flow_px = centre_crop(image, flow_px, info["crop"])
    size = info["crop"]
    emb = dense_embeddings(trunk, head, image, info["mean"], info["std"])
    mu, basis = pca_basis(emb)
    rgb, _, _ = pca_rgb(emb, mu, basis)
    kernel_flow = None if flow_px is None else flow_units(flow_px, info["squash"])
    pixels = pixels or pick_pixels(flow_px, size)
    for x, y in pixels:
        if not (0 <= x < size and 0 <= y < size):
            raise ValueError(f"pixel ({x}, {y}) lies outside the {size} x {size} crop")

    rows = 1 + len(pixels)
    fig = Figure(figsize=(9, 3 * rows), dpi=100)
    what = "embedding" if LOSS_SPECS[info["loss"]].kernel else f"class logits ({info['loss']}), L2-normalised"
    fig.suptitle(f"{Path(ckpt).name}: CPFS-{info['loss']} step {info['step']}; {Path(frame).name}", fontsize=10)
    ax = fig.add_subplot(rows, 3, 1)
    ax.imshow(image)
    ax.set_title("frame (centre crop)", fontsize=9)
    ax = fig.add_subplot(rows, 3, 2)
    if flow_px is not None:
        ax.imshow(flow_to_image(flow_px)[..., ::-1])
        key = ax.inset_axes([0.72, 0.72, 0.28, 0.28])
        key.imshow(wheel_key())
        key.set_axis_off()
        ax.set_title(f"flow (max {np.linalg.norm(flow_px, axis=-1).max():.1f} px)", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no flow given", ha="center", va="center")
    ax = fig.add_subplot(rows, 3, 3)
    ax.imshow(rgb)
    ax.set_title(f"{what}: PCA to RGB", fontsize=9)
    for r, (x, y) in enumerate(pixels, start=1):
        k_phi, k_f = kernel_rows(emb, kernel_flow, (x, y), info["sigma"])
        panels = [(image, f"pixel p = ({x}, {y})"), (k_phi, "K_phi(p, .) = cos / 4"),
                  (k_f, f"K_f(p, .), sigma {info['sigma']:.3g}" if k_f is not None else None)]
        for c, (picture, title) in enumerate(panels):
            ax = fig.add_subplot(rows, 3, 3 * r + c + 1)
            if title is None:
                ax.set_axis_off()
                continue
            if picture is image:
                ax.imshow(picture)
            else:
                vmin, vmax = (-0.25, 0.25) if c == 1 else (0.0, 1.0)
                ax.imshow(picture, cmap="viridis", vmin=vmin, vmax=vmax)
            ax.plot([x], [y], marker="+", color="red", markersize=12, mew=2)
            ax.set_title(title, fontsize=9)
    return save_figure(fig, out or Path(frame).with_suffix("").name + f"-{info['loss']}-viz.png")


def video_frames(video, n: int, cap: int = 300, method: str = "dis-medium") -> list[tuple[int, np.ndarray, np.ndarray]]:
    """n frames spread over the first `cap` frames of a video file or frame folder, each with its flow to the next
    frame (pixels, as `bench flow` computes it): [(index, RGB uint8 (H, W, 3), flow (H, W, 2))]."""
    import cv2

    from cpfs_bench.pretrain.extract import discover_videos, read_frames
    from cpfs_bench.pretrain.flow import make_flow_estimator

    sources = discover_videos([video])
    if len(sources) != 1:
        raise ValueError(f"{video}: --video takes one video file or one folder of frames, found {len(sources)} videos")
    frames = []
    for frame in read_frames(sources[0]):
        frames.append(frame)
        if len(frames) >= cap:
            break
    if len(frames) < 2:
        raise ValueError(f"{video}: {len(frames)} frame(s); a strip needs at least 2")
    picks = np.unique(np.linspace(0, len(frames) - 2, n).round().astype(int))
    estimate = make_flow_estimator(method)
    out = []
    for i in picks:
        gray = [cv2.cvtColor(frames[j], cv2.COLOR_BGR2GRAY) for j in (i, i + 1)]
        out.append((int(i), np.ascontiguousarray(frames[i][..., ::-1]), estimate(*gray)))
    return out


def video_strip(ckpt, video, out=None, frames: int = 4, method: str = "dis-medium") -> Path:
    """A strip over `frames` frames of a video: per frame the frame, its flow and the embedding in RGB by one PCA
    basis fitted on all of them (colours compare across frames). Returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    trunk, head, info = load_pretrained(ckpt)
    rows = []
    for index, image, flow in video_frames(video, frames, method=method):
        image, flow = centre_crop(image, flow, info["crop"])
        rows.append((index, image, flow, dense_embeddings(trunk, head, image, info["mean"], info["std"])))
    stacked = np.concatenate([r[3] for r in rows])  # frames one above the other: one basis, one stretch
    mu, basis = pca_basis(stacked)
    colours = np.split(pca_rgb(stacked, mu, basis)[0], len(rows))
    fig = Figure(figsize=(9, 3 * len(rows)), dpi=100)
    fig.suptitle(f"{Path(ckpt).name}: CPFS-{info['loss']} step {info['step']}; {Path(video).name} (flow: {method})",
                 fontsize=10)
    for r, ((index, image, flow, _), rgb) in enumerate(zip(rows, colours)):
        for c, (picture, title) in enumerate([(image, f"frame {index}"), (flow_to_image(flow)[..., ::-1], "flow"),
                                              (rgb, "embedding: PCA to RGB (one basis)")]):
            ax = fig.add_subplot(len(rows), 3, 3 * r + c + 1)
            ax.imshow(picture)
            ax.set_title(title, fontsize=9)
    return save_figure(fig, out or Path(video).with_suffix("").name + f"-{info['loss']}-strip.png")
