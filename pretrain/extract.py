"""`bench flow`: videos or frame folders -> frames (JPEG) + flow (KITTI PNG) + manifest.

Output layout, one folder per video (a folder exists only once the video is complete, so a crashed
run resumes by skipping finished folders):

    OUT/manifest.json            every finished video: name, source, frame count, size, method
    OUT/failures.txt             videos that could not be read in the last run (name, path, "failed: error"),
                                 and truncated ones whose decodable prefix was kept ("partial: ... frame N")
    OUT/<name>/meta.json
    OUT/<name>/preview.jpg         first frame beside its colour-coded flow, to eyeball the result
    OUT/<name>/frames/000000.jpg ...    frame i
    OUT/<name>/flow/000000.png ...      flow from frame i to frame i + 1 (KITTI 16-bit PNG)
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from cpfs_bench.bench.files import atomic_write_bytes
from cpfs_bench.bench.flowio import encode_flow_png, flow_to_image
from cpfs_bench.bench.parallel import parallel_map, worker_count
from cpfs_bench.bench.runs import progress_bar
from cpfs_bench.pretrain.configs import FlowConfig
from cpfs_bench.pretrain.flow import METHODS, make_flow_estimator

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
JPEG_QUALITY = 95
MANIFEST_FORMAT = "cpfs-bench-flow"


@dataclass
class VideoSource:
    name: str
    path: str
    kind: str  # "video" or "frames"


class NoVideosError(ValueError):
    pass


class DecodingStopped(ValueError):
    """A video stopped decoding part-way (truncated or corrupt); `frame` is the first frame lost."""

    def __init__(self, message: str, frame: int):
        super().__init__(message)
        self.frame = frame


# the settings a finished video folder must share with a rerun into the same --out
SETTINGS = ("method", "resize", "stride", "max_frames")


def discover_videos(paths) -> list[VideoSource]:
    """Expand files and folders into video sources.

    A video file is one source; a folder holding images is one frame sequence (sorted by name); a
    folder holding videos or frame folders contributes each of them."""
    sources: list[VideoSource] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_file():
            sources.append(VideoSource(path.stem, str(path), "video"))
            continue
        entries = sorted(path.iterdir())
        if any(e.is_file() and e.suffix.lower() in IMAGE_EXTENSIONS for e in entries):
            sources.append(VideoSource(path.name, str(path), "frames"))
        for e in entries:
            if e.is_file() and e.suffix.lower() in VIDEO_EXTENSIONS:
                sources.append(VideoSource(e.stem, str(e), "video"))
            elif e.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in e.iterdir()):
                sources.append(VideoSource(e.name, str(e), "frames"))
    seen: dict[str, int] = {}
    for s in sources:  # two videos with one stem (a.mp4, a.avi) must not share an output folder
        n = seen.get(s.name, 0)
        seen[s.name] = n + 1
        if n:
            s.name = f"{s.name}_{n}"
    return sources


def read_frames(source: VideoSource) -> Iterator[np.ndarray]:
    """Yield BGR uint8 frames (H, W, 3) of a video file or a frame folder."""
    if source.kind == "frames":
        files = sorted(p for p in Path(source.path).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for f in files:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"{f}: image could not be decoded")
            yield img
        return
    import av

    try:
        container = av.open(source.path)
    except Exception as e:  # PyAV raises several types (InvalidDataError, FileNotFoundError, ...)
        raise ValueError(f"{source.path}: cannot open video ({e})") from e
    with container:
        if not container.streams.video:
            raise ValueError(f"{source.path}: file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # frame threading adds latency and we run one process per core
        decoded = 0
        try:
            for frame in container.decode(stream):
                if frame.format.name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0:
                    # PyAV's own bgr24 conversion (swscale) costs ~3x OpenCV's
                    yield cv2.cvtColor(frame.to_ndarray(format="yuv420p"), cv2.COLOR_YUV2BGR_I420)
                else:
                    yield frame.to_ndarray(format="bgr24")
                decoded += 1
        except av.error.FFmpegError as e:
            raise DecodingStopped(f"{source.path}: decoding stopped at frame {decoded} ({e})", decoded) from e


def _prepare(frame: np.ndarray, resize) -> np.ndarray:
    if resize is not None and frame.shape[:2] != tuple(resize):
        frame = cv2.resize(frame, (resize[1], resize[0]), interpolation=cv2.INTER_AREA)
    return frame


def process_video(source: VideoSource, out: Path, config: FlowConfig) -> dict:
    """Extract one video into out/<name>/ (via a temporary folder renamed at the end); return its meta."""
    final = out / source.name
    tmp = out / f".{source.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "frames").mkdir(parents=True)
    (tmp / "flow").mkdir()
    estimate = make_flow_estimator(config.method)
    prev_gray = prev_frame = None
    n_frames = 0
    shape = None
    flow_seconds = 0.0
    start = time.perf_counter()
    partial = None
    frames = enumerate(read_frames(source))
    while True:
        try:
            i, frame = next(frames)
        except StopIteration:
            break
        except DecodingStopped as e:  # keep the decodable prefix; the caller lists the video as partial
            partial = {"stopped_at_frame": e.frame, "error": str(e)}
            break
        if i % config.stride:
            continue
        if config.max_frames is not None and n_frames >= config.max_frames:
            break
        frame = _prepare(frame, config.resize)
        if shape is None:
            shape = frame.shape[:2]
        elif frame.shape[:2] != shape:
            raise ValueError(f"{source.path}: frame {i} has size {frame.shape[:2]}, earlier frames {shape}")
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        (tmp / "frames" / f"{n_frames:06d}.jpg").write_bytes(jpg)  # the buffer itself: no copy
        if prev_gray is not None:
            t0 = time.perf_counter()
            flow = estimate(prev_gray, gray)
            flow_seconds += time.perf_counter() - t0
            (tmp / "flow" / f"{n_frames - 1:06d}.png").write_bytes(encode_flow_png(flow))
            if n_frames == 1:
                preview = np.concatenate([prev_frame, flow_to_image(flow)], axis=1)
                cv2.imwrite(str(tmp / "preview.jpg"), preview, [cv2.IMWRITE_JPEG_QUALITY, 90])
        prev_frame = frame
        prev_gray = gray
        n_frames += 1
    if n_frames < 2:
        raise ValueError(f"{source.path}: fewer than 2 frames could be read (got {n_frames})")
    meta = {
        "name": source.name,
        "source": str(Path(source.path).resolve()),
        "kind": source.kind,
        "frames": n_frames,
        "pairs": n_frames - 1,
        "height": int(shape[0]),
        "width": int(shape[1]),
        "method": config.method,
        "stride": config.stride,
        "resize": list(config.resize) if config.resize else None,
        "max_frames": config.max_frames,
        "partial": partial,
        "seconds": round(time.perf_counter() - start, 3),
        "flow_seconds": round(flow_seconds, 3),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return meta


def _worker(args):
    source, out, config, threads = args
    cv2.setNumThreads(threads)
    try:
        return source, process_video(source, out, config), None
    except Exception as e:
        shutil.rmtree(out / f".{source.name}.partial", ignore_errors=True)
        return source, None, f"{type(e).__name__}: {e}"


def settings_of(meta: dict) -> dict:
    """The SETTINGS of a video's meta.json or of a FlowConfig (as a dict), comparable."""
    resize = meta.get("resize")
    return {"method": meta.get("method"), "resize": list(resize) if resize else None, "stride": meta.get("stride", 1),
            "max_frames": meta.get("max_frames")}


def finished_meta(out: Path, name: str) -> dict | None:
    meta = out / name / "meta.json"
    return json.loads(meta.read_text()) if meta.exists() else None


def write_manifest(out: Path) -> dict:
    """Collect every finished video folder under out into out/manifest.json."""
    videos = [json.loads(m.read_text()) for m in sorted(out.glob("*/meta.json"))]
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "videos": videos}
    atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    return manifest


def extract_flow(config: FlowConfig, progress: bool = True) -> dict:
    """Run the whole extraction; returns a summary dict (processed, skipped, failed, pairs, seconds)."""
    if config.method not in METHODS:
        raise ValueError(f"unknown flow method {config.method!r}; choose from {METHODS}")
    if config.stride < 1:
        raise ValueError("stride must be >= 1")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = discover_videos(config.videos)
    if not sources:
        raise NoVideosError(
            f"no videos ({', '.join(VIDEO_EXTENSIONS)}) or frame folders found in {', '.join(map(str, config.videos))}"
        )
    asked = settings_of(asdict(config))
    clashes = []
    for s in sources:
        meta = finished_meta(out, s.name)
        there = settings_of(meta) if meta is not None else asked
        differences = [f"{k}: {there[k]!r} there, {asked[k]!r} asked" for k in SETTINGS if there[k] != asked[k]]
        if differences:
            clashes.append(f"{s.name} ({', '.join(differences)})")
    if clashes:
        raise ValueError(f"{out} already holds videos extracted with other settings: {'; '.join(clashes[:5])}"
                         f"{' ...' if len(clashes) > 5 else ''}; use another --out or the same settings")
    todo = [s for s in sources if finished_meta(out, s.name) is None]
    cores = os.cpu_count() or 1
    workers = worker_count(config.workers, len(todo))
    # one process per video, one OpenCV thread each; a lone video gets every core's threads instead
    threads = max(1, cores // workers)
    failures = []
    partial = []
    done = []
    start = time.perf_counter()
    jobs = [(s, out, config, threads) for s in todo]
    pairs = 0
    bar = progress_bar(parallel_map(_worker, jobs, workers, ordered=False), total=len(todo), desc="flow", unit="video",
                       disable=not progress)
    for source, meta, error in bar:
        if error is None:
            done.append(meta)
            pairs += meta["pairs"]
            if meta["partial"]:
                partial.append((source, meta["partial"]))
                bar.write(f"partial: {source.path}: kept frames 0..{meta['frames'] - 1}; "
                           f"{meta['partial']['error']}", file=sys.stderr)
        else:
            failures.append((source, error))
            bar.write(f"failed: {source.path}: {error}", file=sys.stderr)
        bar.set_postfix(pairs_per_s=f"{pairs / max(time.perf_counter() - start, 1e-9):.0f}")
    lines = [f"{s.name}\t{s.path}\tfailed: {err}" for s, err in failures]
    lines += [f"{s.name}\t{s.path}\tpartial: decoding stopped at frame {p['stopped_at_frame']}; the frames before it "
              f"were kept ({p['error']})" for s, p in partial]
    atomic_write_bytes(out / "failures.txt", ("\n".join(lines) + ("\n" if lines else "")).encode())
    manifest = write_manifest(out)
    return {
        "videos": len(sources),
        "processed": len(done),
        "skipped": len(sources) - len(todo),
        "failed": len(failures),
        "partial": len(partial),
        "pairs": pairs,
        "total_pairs": sum(v["pairs"] for v in manifest["videos"]),
        "seconds": time.perf_counter() - start,
        "out": str(out),
        "config": asdict(config),
    }
