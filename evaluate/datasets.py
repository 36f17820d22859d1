"""Readers for PASCAL VOC (VOCdevkit), SBD and ImageNet folders, exactly as they ship.

Paths: `root` may be the VOCdevkit folder itself or a folder holding it (`root/VOCdevkit/VOC2007`).
Every reader fails with an error that names the file and what was wrong. Nothing here knows whether
the data is real or the embedded synthetic world.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from cpfs_bench.bench.voc_format import VOC_CLASSES, voc_palette  # noqa: F401 (part of this module's API)

IGNORE_INDEX = 255


class DatasetFormatError(ValueError):
    pass


def voc_year_dir(root, year) -> Path:
    """Locate VOC{year} under root (the VOCdevkit folder or its parent)."""
    root = Path(root)
    for candidate in (root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if candidate.is_dir():
            return candidate
    if root.name == f"VOC{year}" and root.is_dir():
        return root
    raise FileNotFoundError(f"{root}: no VOC{year} folder found (looked for {root}/VOC{year} and "
                            f"{root}/VOCdevkit/VOC{year})")


def read_id_list(path: Path) -> list[str]:
    """Image ids of a devkit list file (first token per line)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: split file is missing")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetFormatError(f"{path}: split file lists no images")
    return ids


def voc_classification_labels(root, year, split) -> tuple[list[str], np.ndarray]:
    """Image ids of ImageSets/Main/{split}.txt and labels int8 (n, 20) in {1, -1, 0} read from the
    {class}_{split}.txt files (0 = only difficult instances), classes in VOC_CLASSES order."""
    main = voc_year_dir(root, year) / "ImageSets" / "Main"
    ids = read_id_list(main / f"{split}.txt")
    row = {image_id: k for k, image_id in enumerate(ids)}
    labels = np.zeros((len(ids), len(VOC_CLASSES)), np.int8)
    for c, name in enumerate(VOC_CLASSES):
        path = main / f"{name}_{split}.txt"
        if not path.exists():
            raise FileNotFoundError(f"{path}: class split file is missing")
        seen = 0
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("1", "-1", "0"):
                raise DatasetFormatError(f"{path}:{n}: expected '<image id> <1|-1|0>', got {line!r}")
            if parts[0] not in row:
                raise DatasetFormatError(f"{path}:{n}: image {parts[0]} is not in {main / f'{split}.txt'}")
            labels[row[parts[0]], c] = int(parts[1])
            seen += 1
        if seen != len(ids):
            raise DatasetFormatError(f"{path}: lists {seen} images, {main / f'{split}.txt'} lists {len(ids)}")
    return ids, labels


def parse_voc_xml(path: Path) -> dict:
    """One Annotations/*.xml -> {filename, width, height, segmented, objects: [{name, pose, truncated,
    difficult, occluded, bbox (xmin, ymin, xmax, ymax) floats as written}]}."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: annotation file is missing")
    try:
        tree = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DatasetFormatError(f"{path}: malformed XML ({e})") from e

    def text(node, tag, required=True, default=None):
        el = node.find(tag)
        if el is None or el.text is None:
            if required:
                raise DatasetFormatError(f"{path}: <{tag}> missing")
            return default
        return el.text.strip()

    def number(node, tag, cast, required=True, default=None):
        value = text(node, tag, required, None)
        if value is None:
            return default
        try:
            return cast(float(value)) if cast is int else cast(value)
        except ValueError as e:
            raise DatasetFormatError(f"{path}: <{tag}> is not a number: {value!r}") from e

    size = tree.find("size")
    objects = []
    for obj in tree.findall("object"):
        name = text(obj, "name")
        if name not in VOC_CLASSES:
            raise DatasetFormatError(f"{path}: unknown class {name!r}")
        box = obj.find("bndbox")
        if box is None:
            raise DatasetFormatError(f"{path}: object {name} has no <bndbox>")
        bbox = tuple(number(box, k, float) for k in ("xmin", "ymin", "xmax", "ymax"))
        objects.append({
            "name": name, "pose": text(obj, "pose", False, "Unspecified"),
            # older/other annotation sets omit these flags; the devkit then treats them as 0
            "truncated": bool(number(obj, "truncated", int, False, 0)),
            "difficult": bool(number(obj, "difficult", int, False, 0)),
            "occluded": bool(number(obj, "occluded", int, False, 0)),
            "bbox": bbox,
        })
    return {
        "filename": text(tree, "filename"),
        "width": number(size, "width", int) if size is not None else None,
        "height": number(size, "height", int) if size is not None else None,
        "segmented": bool(number(tree, "segmented", int, False, 0)),
        "objects": objects,
    }


def voc_detection_annotations(root, year, split) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """image_id -> (boxes float64 (K, 4) xmin, ymin, xmax, ymax exactly as in the XML (1-based),
    labels int64 (K,) in 0..19, difficult bool (K,)) for every image of ImageSets/Main/{split}.txt."""
    year_dir = voc_year_dir(root, year)
    out = {}
    for image_id in read_id_list(year_dir / "ImageSets" / "Main" / f"{split}.txt"):
        ann = parse_voc_xml(year_dir / "Annotations" / f"{image_id}.xml")
        objs = ann["objects"]
        out[image_id] = (np.array([o["bbox"] for o in objs], np.float64).reshape(-1, 4),
                         np.array([VOC_CLASSES.index(o["name"]) for o in objs], np.int64),
                         np.array([o["difficult"] for o in objs], bool))
    return out


def voc_image_path(root, year, image_id) -> Path:
    path = voc_year_dir(root, year) / "JPEGImages" / f"{image_id}.jpg"
    if not path.exists():
        raise FileNotFoundError(f"{path}: image listed in the split file is missing")
    return path


def voc_split_images(root, year, split, limit: int | None = None) -> list[Path]:
    """The image files of ImageSets/Main/{split}.txt, in its order (only the first `limit` when given)."""
    ids = read_id_list(voc_year_dir(root, year) / "ImageSets" / "Main" / f"{split}.txt")
    return [voc_image_path(root, year, i) for i in (ids[:limit] if limit else ids)]


def read_segmentation_mask(path) -> np.ndarray:
    """A VOC segmentation PNG (palette 'P' or greyscale 'L' index data) -> uint8 (H, W) class indices,
    255 = ignore. RGB colour renderings are rejected: their colours are not indices."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: segmentation mask is missing")
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:
        raise DatasetFormatError(f"{path}: not a readable image ({e})") from e
    if img.mode not in ("P", "L"):
        raise DatasetFormatError(f"{path}: expected palette ('P') or greyscale ('L') index data, got mode {img.mode!r}"
                                 " (a colour rendering of the mask cannot be read as class indices)")
    return np.array(img, dtype=np.uint8)


def voc_segmentation_ids(root, year, split) -> list[str]:
    """Ids of ImageSets/Segmentation/{split}.txt (train, val, trainval, test, or e.g. seg11valid)."""
    return read_id_list(voc_year_dir(root, year) / "ImageSets" / "Segmentation" / f"{split}.txt")


def sbd_dir(root) -> Path:
    """Locate SBD's dataset folder: root itself, root/dataset or root/benchmark_RELEASE/dataset."""
    root = Path(root)
    for candidate in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir():
            return candidate
    raise FileNotFoundError(f"{root}: no SBD dataset folder (with cls/) found")


def sbd_ids(root, split) -> list[str]:
    """Ids of SBD's train.txt or val.txt."""
    return read_id_list(sbd_dir(root) / f"{split}.txt")


def read_sbd_segmentation(path) -> np.ndarray:
    """SBD cls/*.mat -> uint8 (H, W) class indices (GTcls.Segmentation; SBD has no void label)."""
    import scipy.io

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: SBD annotation is missing")
    try:
        mat = scipy.io.loadmat(path)
        seg = mat["GTcls"][0]["Segmentation"][0]
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise DatasetFormatError(f"{path}: not an SBD class annotation (GTcls.Segmentation): {e}") from e
    except Exception as e:  # scipy raises several types for non-MAT files
        raise DatasetFormatError(f"{path}: not a readable MAT file ({e})") from e
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.max(initial=0) > len(VOC_CLASSES):
        raise DatasetFormatError(f"{path}: GTcls.Segmentation is not an (H, W) map of classes 0..20")
    return seg.astype(np.uint8)


def imagenet_folder(root, split, transform=None):
    """torchvision's ImageFolder over root/{split}/<wnid>/*.JPEG (classes = sorted class folders), with
    errors naming the folder. Items: (transform(RGB PIL image), class index)."""
    from torchvision.datasets import ImageFolder

    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: no such folder (expected {root}/{split}/<wnid>/*.JPEG)")
    try:
        return ImageFolder(str(split_dir), transform=transform)
    except FileNotFoundError as e:
        raise DatasetFormatError(f"{split_dir}: {e}") from None


def imagenet_splits(root, train_transform=None, val_transform=None):
    """(train, val) imagenet_folder datasets of root; ValueError when their class folders differ."""
    train, val = imagenet_folder(root, "train", train_transform), imagenet_folder(root, "val", val_transform)
    if val.classes != train.classes:
        raise DatasetFormatError(f"{root}: train and val have different class folders")
    return train, val


def imagenet_samples(root, split) -> tuple[list[tuple[Path, int]], list[str]]:
    """ImageNet-style folder root/{split}/<wnid>/*.JPEG -> ([(path, class index)], sorted wnids)."""
    folder = imagenet_folder(root, split)
    return [(Path(p), k) for p, k in folder.samples], list(folder.classes)


class VOCClassification:
    """Torch-style dataset over voc_classification_labels: item -> (image, labels int8 (20,) in {1, -1, 0}).

    `transform` maps the RGB PIL image (e.g. torchvision transforms); None returns the PIL image."""

    def __init__(self, root, year="2007", split="trainval", transform=None):
        self.root, self.year, self.transform = root, str(year), transform
        self.ids, self.labels = voc_classification_labels(root, self.year, split)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        image = Image.open(voc_image_path(self.root, self.year, self.ids[i])).convert("RGB")
        return (self.transform(image) if self.transform else image), self.labels[i]


class VOCDetection:
    """Item -> (RGB PIL image, {"boxes" (K, 4) 1-based as in the XML, "labels" (K,) 0..19, "difficult" (K,)})."""

    def __init__(self, root, year="2007", split="trainval"):
        self.root, self.year = root, str(year)
        self.annotations = voc_detection_annotations(root, self.year, split)
        self.ids = list(self.annotations)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        boxes, labels, difficult = self.annotations[self.ids[i]]
        image = Image.open(voc_image_path(self.root, self.year, self.ids[i])).convert("RGB")
        return image, {"boxes": boxes, "labels": labels, "difficult": difficult, "image_id": self.ids[i]}


class VOCSegmentation:
    """Item -> (RGB PIL image, uint8 (H, W) class indices, 255 = ignore) for a VOC Segmentation list
    (train, val, seg11valid, ...) or, with source="sbd", for SBD's train/val (masks from cls/*.mat;
    images from SBD's img/)."""

    def __init__(self, root, year="2012", split="train", source="voc"):
        if source not in ("voc", "sbd"):
            raise ValueError(f"source must be 'voc' or 'sbd', got {source!r}")
        self.root, self.year, self.source = root, str(year), source
        self.ids = sbd_ids(root, split) if source == "sbd" else voc_segmentation_ids(root, self.year, split)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        image_id = self.ids[i]
        if self.source == "sbd":
            folder = sbd_dir(self.root)
            image_path = folder / "img" / f"{image_id}.jpg"
            if not image_path.exists():
                raise FileNotFoundError(f"{image_path}: image listed in the split file is missing")
            mask = read_sbd_segmentation(folder / "cls" / f"{image_id}.mat")
        else:
            image_path = voc_image_path(self.root, self.year, image_id)
            mask = read_segmentation_mask(voc_year_dir(self.root, self.year) / "SegmentationClass" / f"{image_id}.png")
        image = Image.open(image_path).convert("RGB")
        if image.size != (mask.shape[1], mask.shape[0]):
            raise DatasetFormatError(f"{image_path}: image size {image.size} differs from its mask {mask.shape[::-1]}")
        return image, mask
