"""`bench proposals`: selective-search object proposals for VOC splits, as Fast R-CNN used them.

Selective search is OpenCV contrib's (cv2.ximgproc.segmentation), "fast" mode by default (Fast R-CNN's
VOC07 proposals came from selective search's fast mode, ~2k boxes per image).

Storage is Fast R-CNN's public proposal format, so the published files (selective_search_data/
voc_2007_trainval.mat, voc_2007_test.mat) can be dropped in instead: one MATLAB .mat per split holding
  boxes:  a 1 x N cell array; cell i is a (K_i, 4) double array of 1-based (y1, x1, y2, x2) boxes of
          image i (pascal_voc.py reads them as boxes[:, (1, 0, 3, 2)] - 1)
  images: a 1 x N cell array of the image ids, in the split file's order.
Files are named voc_<year>_<split>.mat, as Fast R-CNN names them.

Computing them is parallel over images and resumable: chunks of images are written atomically to
$CPFS_BENCH_HOME/proposals/<name>-<mode>-<key>/, where key fingerprints the image set (ids and file
sizes), so a rerun skips the finished chunks and a changed image set gets its own folder."""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np

from cpfs_bench.bench.files import atomic_write, atomic_write_json
from cpfs_bench.bench.parallel import parallel_map, worker_count
from cpfs_bench.bench.paths import bench_home
from cpfs_bench.bench.runs import progress_bar
from cpfs_bench.evaluate.boxes import mat_to_pixels, pixels_to_mat
from cpfs_bench.evaluate.configs import ProposalsConfig
from cpfs_bench.evaluate.datasets import DatasetFormatError, read_id_list, voc_image_path, voc_year_dir

MODES = ProposalsConfig.MODES
CHUNK_IMAGES = 25  # images per resumable chunk file


class ProposalFormatError(DatasetFormatError):
    pass


def selective_search(image_bgr: np.ndarray, mode: str = "fast") -> np.ndarray:
    """Selective-search boxes of one image (H, W, 3) uint8 BGR -> float64 (K, 4) 0-based inclusive
    (x1, y1, x2, y2), unique, sorted by rows. OpenCV ranks the boxes with an unseeded random draw
    (cv2.setRNGSeed does not reach it): the set is reproducible, its order is not, and Fast R-CNN uses
    every box, so the order carries nothing and sorting makes the files reproducible."""
    import cv2

    if mode not in MODES:
        raise ValueError(f"unknown selective-search mode {mode!r}; choose from {MODES}")
    if not hasattr(cv2, "ximgproc"):
        raise RuntimeError(f"OpenCV at {cv2.__file__} has no ximgproc (selective search is in the contrib build): "
                           f"pip install opencv-contrib-python-headless, after removing other OpenCV wheels")
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(image_bgr)
    ss.switchToSelectiveSearchFast() if mode == "fast" else ss.switchToSelectiveSearchQuality()
    rects = np.asarray(ss.process(), np.float64).reshape(-1, 4)  # x, y, w, h
    boxes = np.stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2] - 1, rects[:, 1] + rects[:, 3] - 1], 1)
    return np.unique(boxes, axis=0)


def write_proposals_mat(path, image_ids, boxes) -> Path:
    """Write Fast R-CNN's proposal file: image_ids (N,), boxes a list of N (K_i, 4) 0-based
    (x1, y1, x2, y2) arrays. Atomic."""
    from scipy.io import savemat

    if len(image_ids) != len(boxes):
        raise ValueError(f"{len(image_ids)} image ids but {len(boxes)} box arrays")
    cells = np.empty((1, len(boxes)), dtype=object)
    names = np.empty((1, len(boxes)), dtype=object)
    for i, (image_id, b) in enumerate(zip(image_ids, boxes)):
        cells[0, i] = pixels_to_mat(b)
        names[0, i] = str(image_id)
    buffer = io.BytesIO()
    savemat(buffer, {"boxes": cells, "images": names}, do_compression=True)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def read_proposals_mat(path) -> tuple[list[str] | None, list[np.ndarray]]:
    """A proposal .mat in Fast R-CNN's format -> (image ids, or None if the file has no `images`;
    a list of float64 (K_i, 4) 0-based (x1, y1, x2, y2) arrays)."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: proposal file is missing (make it with `bench proposals`)")
    try:
        data = loadmat(str(path))
    except Exception as e:
        raise ProposalFormatError(f"{path}: not a readable MATLAB .mat file ({e})") from e
    if "boxes" not in data:
        names = sorted(k for k in data if not k.startswith("__"))
        raise ProposalFormatError(f"{path}: no 'boxes' variable (has {names}); expected Fast R-CNN's proposal format")
    boxes = []
    for i, cell in enumerate(data["boxes"].ravel()):
        cell = np.asarray(cell)
        if cell.size == 0:
            boxes.append(np.zeros((0, 4)))
            continue
        if cell.ndim != 2 or cell.shape[1] != 4:
            raise ProposalFormatError(f"{path}: boxes cell {i} has shape {cell.shape}; expected (K, 4) rows of "
                                      f"1-based (y1, x1, y2, x2)")
        boxes.append(mat_to_pixels(cell))
    ids = None
    if "images" in data:
        ids = [str(np.asarray(x).ravel()[0]) if np.asarray(x).size else "" for x in data["images"].ravel()]
        if len(ids) != len(boxes):
            raise ProposalFormatError(f"{path}: {len(ids)} image ids but {len(boxes)} box cells")
    return ids, boxes


def proposals_name(year: str, split: str) -> str:
    """Fast R-CNN's file name for a split's proposals."""
    return f"voc_{year}_{split}.mat"


def check_matches_split(path, file_ids, split_ids, split_file) -> None:
    """A proposals file must cover exactly the split's images, in order: else an error naming both."""
    if file_ids is None:
        return
    if list(file_ids) != list(split_ids):
        missing = sorted(set(split_ids) - set(file_ids))[:3]
        extra = sorted(set(file_ids) - set(split_ids))[:3]
        detail = (f"missing {missing}" if missing else "") + (f" extra {extra}" if extra else "")
        raise ProposalFormatError(f"{path}: its {len(file_ids)} images do not match the {len(split_ids)} of "
                                  f"{split_file} ({detail.strip() or 'same images, another order'})")


def image_set_key(paths, mode: str) -> str:
    """Fingerprint of an image set (names and sizes, in order) and the selective-search settings."""
    import cv2

    h = hashlib.sha256(f"{mode} {cv2.__version__}\n".encode())
    for p in paths:
        h.update(f"{Path(p).name} {Path(p).stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def _chunk_worker(job) -> int:
    """Proposals of one chunk of images, written atomically to job["out"]; returns the image count."""
    import cv2

    cv2.setNumThreads(1)  # one image per process; the processes are the parallelism
    counts, rows = [], []
    for path in job["paths"]:
        image = cv2.imread(path)
        if image is None:
            raise DatasetFormatError(f"{path}: not a readable image")
        b = selective_search(image, job["mode"])
        counts.append(len(b))
        rows.append(b)
    buffer = io.BytesIO()
    np.savez(buffer, counts=np.array(counts, np.int64), boxes=np.concatenate(rows) if rows else np.zeros((0, 4)))
    atomic_write(job["out"], lambda f: f.write(buffer.getvalue()))
    return len(job["paths"])


def compute_proposals(voc, year: str, split: str, image_ids=None, mode: str = "fast", workers: int | None = None,
                      cache=None, progress: bool = True) -> Path:
    """Selective-search proposals of a VOC split (or of `image_ids`, a subset in split order) -> path of
    the voc_<year>_<split>.mat, computed once per image set (resumable, cached)."""
    split_file = voc_year_dir(voc, year) / "ImageSets" / "Main" / f"{split}.txt"
    ids = list(image_ids) if image_ids is not None else read_id_list(split_file)
    paths = [str(voc_image_path(voc, year, i)) for i in ids]
    folder = Path(cache or bench_home() / "proposals") / f"voc_{year}_{split}-{mode}-{image_set_key(paths, mode)}"
    final = folder / proposals_name(year, split)
    if final.exists():
        return final
    folder.mkdir(parents=True, exist_ok=True)
    # Two runs that need the same image set at once (two evaluations started together) would both compute
    # it and one would read the chunks the other had just merged and deleted: the second waits here, then
    # finds the finished file. flock is released when the file closes, also when the process dies.
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.exists():
            return final
        return _compute_chunks_and_merge(folder, final, ids, paths, year, split, voc, mode, workers, progress)


def _compute_chunks_and_merge(folder: Path, final: Path, ids, paths, year, split, voc, mode, workers,
                              progress) -> Path:
    chunks = [(k, paths[s:s + CHUNK_IMAGES]) for k, s in enumerate(range(0, len(paths), CHUNK_IMAGES))]
    todo = [{"paths": p, "mode": mode, "out": str(folder / f"chunk-{k:05d}.npz")} for k, p in chunks
            if not (folder / f"chunk-{k:05d}.npz").exists()]
    processes = worker_count(workers, len(todo))
    start = time.perf_counter()
    bar = progress_bar(total=len(paths), initial=len(paths) - sum(len(j["paths"]) for j in todo),
                       desc=f"selective search {split}", unit="image", disable=not progress)
    with bar:
        for n in parallel_map(_chunk_worker, todo, processes, ordered=False):
            bar.update(n)
    seconds = time.perf_counter() - start
    boxes = []
    for k, _ in chunks:
        with np.load(folder / f"chunk-{k:05d}.npz") as z:
            boxes += np.split(z["boxes"], np.cumsum(z["counts"])[:-1])
    write_proposals_mat(final, ids, boxes)
    import cv2

    atomic_write_json(folder / "proposals.json", {
        "voc": str(Path(voc).resolve()), "year": year, "split": split, "images": len(ids), "mode": mode,
        "opencv": cv2.__version__, "workers": processes,
        "computed_images": sum(len(j["paths"]) for j in todo),
        "seconds": seconds, "boxes_per_image": float(np.mean([len(b) for b in boxes])) if boxes else 0.0})
    for k, _ in chunks:
        (folder / f"chunk-{k:05d}.npz").unlink()
    return final


def load_proposals(path, split_ids, split_file) -> list[np.ndarray]:
    """Read a proposals file and check it covers the split's images in order -> list of 0-based boxes."""
    file_ids, boxes = read_proposals_mat(path)
    check_matches_split(path, file_ids, split_ids, split_file)
    if file_ids is None and len(boxes) != len(split_ids):
        raise ProposalFormatError(f"{path}: {len(boxes)} box cells but {split_file} lists {len(split_ids)} images")
    return boxes


def run(cfg: ProposalsConfig, progress: bool = True) -> dict[str, dict]:
    """Proposals for every split of cfg -> {split: {"path", and the cache's proposals.json: images, seconds,
    boxes_per_image, ...}}."""
    import shutil

    voc = cfg.voc
    if voc is None:
        from cpfs_bench.bench.world.defaults import default_voc_world

        voc = str(default_voc_world(progress=progress))
    out = {}
    for split in cfg.splits:
        cached = compute_proposals(voc, cfg.year, split, mode=cfg.mode, workers=cfg.workers, progress=progress)
        path = cached
        if cfg.out:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            path = Path(shutil.copy2(cached, Path(cfg.out) / cached.name))
        meta = cached.parent / "proposals.json"
        out[split] = {"path": str(path), **(json.loads(meta.read_text()) if meta.exists() else {})}
    return out
