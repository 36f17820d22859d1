"""Embedded evaluation world in the real PASCAL VOC / SBD layouts (`bench world voc`).

Writes, under `out`:

    VOCdevkit/VOC2007/  JPEGImages/000001.jpg, Annotations/000001.xml,
                        ImageSets/Main/{train,val,trainval,test}.txt and {class}_{split}.txt (1 / -1 / 0),
                        ImageSets/Segmentation/{train,val,trainval,test}.txt,
                        SegmentationClass/*.png, SegmentationObject/*.png (palette PNGs, 255 = void/border)
    VOCdevkit/VOC2012/  the same for ids 2007_000001 ... 2012_NNNNNN (Main and Segmentation: train, val,
                        trainval; no test), plus ImageSets/Segmentation/seg11valid.txt
    benchmark_RELEASE/dataset/  SBD: img/*.jpg, cls/*.mat (GTcls.Segmentation, Boundaries,
                        CategoriesPresent), inst/*.mat (GTinst), train.txt, val.txt
    world.json          what was drawn: every object's class, box, flags (for tests and inspection)

Annotation conventions follow the devkit: boxes are the visible extent of the object in 1-based
pixel coordinates; `truncated` = the object extends beyond the image; `difficult` = too small or too
occluded to recognise; a class file says 1 if a non-difficult instance is present, 0 if only
difficult ones, -1 otherwise. Segmentation masks mark object borders (a band of ~4 px) and difficult
objects 255.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np
from PIL import Image

from cpfs_bench.bench.parallel import parallel_map, worker_count
from cpfs_bench.bench.runs import progress_bar
from cpfs_bench.bench.world.configs import VOCWorldConfig
from cpfs_bench.bench.voc_format import VOC_CLASSES, voc_palette
from cpfs_bench.bench.world.layers import full_masks
from cpfs_bench.bench.world.objects import WORLD_VERSION, still_scene

POSES = ("Left", "Right", "Frontal", "Rear", "Unspecified")
BORDER_KERNEL = np.ones((5, 5), np.uint8)


def draw_scene(rng: np.random.Generator, h: int, w: int, max_objects: int = 4, object_size=(0.2, 0.5),
               center_spread: float = 0.0):
    """One image with 1..max_objects objects, extents drawn in object_size (fraction of the shorter side). Returns BGR image, per-object list of dicts (class, visible mask,
    truncated, difficult, pose, visible fraction), in drawing order (back to front)."""
    def centre():
        if center_spread <= 0:
            return rng.uniform(0.05, 0.95, 2)
        return np.clip(rng.normal(0.5, center_spread, 2), 0.05, 0.95)

    placements = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls, (cx, cy) = int(rng.integers(len(VOC_CLASSES))), centre()
        placements.append((cls, (float(cx * w), float(cy * h)), float(rng.uniform(*object_size) * min(h, w))))
    image, instances, layers = still_scene(rng, h, w, placements)
    pad = max(h, w)  # the whole silhouette fits, so truncation is measurable
    full = full_masks(layers, 0, h, w, pad)
    objects = []
    for i, (cls, _, _) in enumerate(placements):
        inside = full[i][pad:pad + h, pad:pad + w]
        if not inside.any():
            continue
        objects.append({"class": cls, "visible": instances == i, "full_area": int(full[i].sum()),
                        "truncated": bool(inside.sum() < full[i].sum()), "pose": POSES[int(rng.integers(len(POSES)))]})
    kept = []
    for o in objects:
        area = int(o["visible"].sum())
        if area == 0:
            continue
        o["visible_fraction"] = area / o["full_area"]
        ys, xs = np.nonzero(o["visible"])
        o["box"] = [int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1]  # 1-based
        box_w, box_h = o["box"][2] - o["box"][0] + 1, o["box"][3] - o["box"][1] + 1
        o["difficult"] = bool(area < 300 or o["visible_fraction"] < 0.25 or min(box_w, box_h) < 12)
        o["occluded"] = bool(o["visible_fraction"] < 0.85 and not o["truncated"])
        kept.append(o)
    return image, kept


def segmentation_maps(objects, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Class and instance index maps (uint8, 255 on borders and difficult objects)."""
    cls_map = np.zeros((h, w), np.uint8)
    inst_map = np.zeros((h, w), np.uint8)
    border = np.zeros((h, w), bool)
    for i, o in enumerate(objects, start=1):
        m = o["visible"]
        cls_map[m] = 255 if o["difficult"] else o["class"] + 1
        inst_map[m] = 255 if o["difficult"] else i
        mu8 = m.astype(np.uint8)
        border |= (cv2.dilate(mu8, BORDER_KERNEL) - cv2.erode(mu8, BORDER_KERNEL)).astype(bool)
    cls_map[border] = 255
    inst_map[border] = 255
    return cls_map, inst_map


def annotation_xml(image_id: str, year: str, w: int, h: int, objects, segmented: bool) -> str:
    database = "The VOC2007 Database" if year == "2007" else f"The VOC{image_id[:4]} Database"
    lines = ["<annotation>", f"\t<folder>VOC{year}</folder>", f"\t<filename>{image_id}.jpg</filename>",
             "\t<source>", f"\t\t<database>{database}</database>", f"\t\t<annotation>PASCAL VOC{year}</annotation>",
             "\t\t<image>cpfs-bench synthetic</image>", "\t</source>",
             "\t<size>", f"\t\t<width>{w}</width>", f"\t\t<height>{h}</height>", "\t\t<depth>3</depth>", "\t</size>",
             f"\t<segmented>{int(segmented)}</segmented>"]
    for o in objects:
        lines += ["\t<object>", f"\t\t<name>{escape(VOC_CLASSES[o['class']])}</name>", f"\t\t<pose>{o['pose']}</pose>",
                  f"\t\t<truncated>{int(o['truncated'])}</truncated>"]
        if year != "2007":  # VOC2012 annotations carry an occlusion flag; VOC2007's do not
            lines.append(f"\t\t<occluded>{int(o['occluded'])}</occluded>")
        xmin, ymin, xmax, ymax = o["box"]
        lines += [f"\t\t<difficult>{int(o['difficult'])}</difficult>", "\t\t<bndbox>", f"\t\t\t<xmin>{xmin}</xmin>",
                  f"\t\t\t<ymin>{ymin}</ymin>", f"\t\t\t<xmax>{xmax}</xmax>", f"\t\t\t<ymax>{ymax}</ymax>",
                  "\t\t</bndbox>", "\t</object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def save_palette_png(path: Path, index_map: np.ndarray) -> None:
    img = Image.fromarray(index_map, mode="P")
    img.putpalette(voc_palette())
    img.save(path)


def write_image(args) -> dict:
    """Draw and write one image (JPEG, XML, masks when segmented, SBD .mat when in SBD)."""
    cfg, year, image_id, segmented, in_sbd = args
    cv2.setNumThreads(1)
    rng = np.random.default_rng([cfg.seed, int(year), _id_number(image_id)])
    h = int(rng.integers(cfg.min_size, cfg.max_size + 1))
    w = int(rng.integers(cfg.min_size, cfg.max_size + 1))
    image, objects = draw_scene(rng, h, w, cfg.max_objects, cfg.object_size, cfg.center_spread)
    root = Path(cfg.out) / "VOCdevkit" / f"VOC{year}"
    cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    (root / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(image_id, year, w, h, objects, segmented))
    if segmented or in_sbd:
        cls_map, inst_map = segmentation_maps(objects, h, w)
    if segmented:
        save_palette_png(root / "SegmentationClass" / f"{image_id}.png", cls_map)
        save_palette_png(root / "SegmentationObject" / f"{image_id}.png", inst_map)
    if in_sbd:
        write_sbd(Path(cfg.out) / "benchmark_RELEASE" / "dataset", image_id, image, objects, h, w)
    return {"id": image_id, "year": year, "width": w, "height": h, "segmented": segmented, "sbd": in_sbd,
            "objects": [{"class": VOC_CLASSES[o["class"]], "box": o["box"], "difficult": o["difficult"],
                         "truncated": o["truncated"], "occluded": o["occluded"], "pose": o["pose"],
                         "visible_fraction": round(o["visible_fraction"], 4)} for o in objects]}


def _id_number(image_id: str) -> int:
    return int(image_id.replace("_", ""))


def write_sbd(root: Path, image_id: str, image: np.ndarray, objects, h: int, w: int) -> None:
    """SBD's files for one image: no void label; boundaries as a cell array of sparse maps per class."""
    import scipy.io
    import scipy.sparse

    cls_map = np.zeros((h, w), np.uint8)
    inst_map = np.zeros((h, w), np.uint8)
    for i, o in enumerate(objects, start=1):
        cls_map[o["visible"]] = o["class"] + 1
        inst_map[o["visible"]] = i
    boundaries = np.empty((len(VOC_CLASSES), 1), dtype=object)
    for c in range(len(VOC_CLASSES)):
        m = (cls_map == c + 1).astype(np.uint8)
        boundaries[c, 0] = scipy.sparse.csc_matrix((cv2.dilate(m, np.ones((3, 3), np.uint8)) - m).astype(bool))
    present = np.array(sorted({o["class"] + 1 for o in objects}), np.uint8).reshape(-1, 1)
    scipy.io.savemat(root / "cls" / f"{image_id}.mat",
                     {"GTcls": {"Segmentation": cls_map, "Boundaries": boundaries, "CategoriesPresent": present}})
    scipy.io.savemat(root / "inst" / f"{image_id}.mat",
                     {"GTinst": {"Segmentation": inst_map, "Categories": np.array([o["class"] + 1 for o in objects], np.uint8).reshape(-1, 1)}})
    cv2.imwrite(str(root / "img" / f"{image_id}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])


def _write_list(path: Path, ids) -> None:
    path.write_text("".join(f"{i}\n" for i in ids))


def write_split_files(root: Path, splits: dict[str, list[str]], records: dict[str, dict], seg_splits: dict[str, list[str]]):
    main = root / "ImageSets" / "Main"
    for split, ids in splits.items():
        _write_list(main / f"{split}.txt", ids)
        for c, name in enumerate(VOC_CLASSES):
            lines = []
            for i in ids:
                flags = [o["difficult"] for o in records[i]["objects"] if o["class"] == name]
                label = -1 if not flags else (1 if not all(flags) else 0)
                lines.append(f"{i} {label:2d}\n")  # the devkit's "%s %2d" format
            (main / f"{name}_{split}.txt").write_text("".join(lines))
    for split, ids in seg_splits.items():
        _write_list(root / "ImageSets" / "Segmentation" / f"{split}.txt", ids)


def write_voc_world(cfg: VOCWorldConfig, progress: bool = True) -> Path:
    """Write the VOC2007, VOC2012 and SBD folders (see the module docstring); returns cfg.out."""
    out = Path(cfg.out)
    rng = np.random.default_rng([cfg.seed, 2007])
    for year in ("2007", "2012"):
        root = out / "VOCdevkit" / f"VOC{year}"
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass",
                    "SegmentationObject"):
            (root / sub).mkdir(parents=True, exist_ok=True)
    sbd = out / "benchmark_RELEASE" / "dataset"
    for sub in ("cls", "inst", "img"):
        (sbd / sub).mkdir(parents=True, exist_ok=True)

    # VOC2007: six-digit ids, trainval then test (the real set interleaves them; order does not matter)
    n07 = cfg.voc07_trainval + cfg.voc07_test
    ids07 = [f"{i:06d}" for i in range(1, n07 + 1)]
    perm = rng.permutation(n07)
    trainval07 = sorted(ids07[i] for i in perm[:cfg.voc07_trainval])
    test07 = sorted(ids07[i] for i in perm[cfg.voc07_trainval:])
    seg07 = set(rng.choice(ids07, size=int(cfg.seg_fraction * n07), replace=False).tolist())
    # VOC2012: year-prefixed ids; SBD draws from the years up to 2011, as the real one does from VOC2011
    years = rng.choice(np.arange(2007, 2013), size=cfg.voc12_trainval)
    ids12 = sorted(f"{y}_{i:06d}" for i, y in enumerate(years, start=1))
    seg12 = set(rng.choice(ids12, size=int(cfg.seg_fraction * len(ids12)), replace=False).tolist())
    pre2012 = [i for i in ids12 if int(i[:4]) <= 2011]
    in_sbd = set(rng.choice(pre2012, size=int(0.8 * len(pre2012)), replace=False).tolist())

    jobs = [(cfg, "2007", i, i in seg07, False) for i in ids07] + [(cfg, "2012", i, i in seg12, i in in_sbd) for i in ids12]
    records = {}
    for rec in progress_bar(parallel_map(write_image, jobs, worker_count(cfg.workers, len(jobs)), chunksize=8),
                            total=len(jobs), desc="world voc", unit="image", disable=not progress):
        records[(rec["year"], rec["id"])] = rec

    def halves(ids):
        p = rng.permutation(len(ids))
        return sorted(ids[i] for i in p[: len(ids) // 2]), sorted(ids[i] for i in p[len(ids) // 2:])

    r07 = {i: records[("2007", i)] for i in ids07}
    train07, val07 = halves(trainval07)
    seg_tv07 = [i for i in trainval07 if i in seg07]
    seg_train07 = [i for i in train07 if i in seg07]  # segmentation splits nest in the Main ones
    seg_val07 = [i for i in val07 if i in seg07]
    write_split_files(out / "VOCdevkit" / "VOC2007",
                      {"train": train07, "val": val07, "trainval": trainval07, "test": test07}, r07,
                      {"train": seg_train07, "val": seg_val07, "trainval": sorted(seg_tv07),
                       "test": [i for i in test07 if i in seg07]})
    r12 = {i: records[("2012", i)] for i in ids12}
    train12, val12 = halves(ids12)
    seg_train12 = [i for i in train12 if i in seg12]
    seg_val12 = [i for i in val12 if i in seg12]
    write_split_files(out / "VOCdevkit" / "VOC2012", {"train": train12, "val": val12, "trainval": ids12}, r12,
                      {"train": seg_train12, "val": seg_val12, "trainval": sorted(seg_train12 + seg_val12)})
    sbd_ids = sorted(in_sbd)
    sbd_train, sbd_val = halves(sbd_ids)
    _write_list(sbd / "train.txt", sbd_train)
    _write_list(sbd / "val.txt", sbd_val)
    # FCN's seg11valid: VOC2011 segmentation val images that SBD's training set does not contain
    seg11valid = [i for i in seg_val12 if int(i[:4]) <= 2011 and i not in set(sbd_train)]
    _write_list(out / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "seg11valid.txt", seg11valid)
    (out / "world.json").write_text(json.dumps({"kind": "voc", "world_version": WORLD_VERSION, "config": asdict(cfg),
                                                "images": [records[k] for k in sorted(records)]}, indent=0))
    return out
