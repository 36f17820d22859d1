"""evaluate/datasets.py against the embedded VOC/SBD/ImageNet worlds (writer -> reader round trip),
torchvision's reference readers, and bad input."""
import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from cpfs_bench.bench.world.imagenet import ImageNetWorldConfig, write_imagenet_world
from cpfs_bench.bench.world.voc import VOCWorldConfig, write_voc_world
from cpfs_bench.evaluate.datasets import (
    VOC_CLASSES,
    DatasetFormatError,
    imagenet_samples,
    parse_voc_xml,
    read_id_list,
    read_sbd_segmentation,
    read_segmentation_mask,
    sbd_dir,
    sbd_ids,
    voc_classification_labels,
    voc_detection_annotations,
    voc_image_path,
    voc_segmentation_ids,
    voc_year_dir,
)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    write_voc_world(VOCWorldConfig(out=str(root), seed=4, voc07_trainval=50, voc07_test=50, voc12_trainval=80,
                                   workers=2), progress=False)
    truth = {(im["year"], im["id"]): im for im in json.loads((root / "world.json").read_text())["images"]}
    return root, truth


def expected_label(objects, name):
    flags = [o["difficult"] for o in objects if o["class"] == name]
    return -1 if not flags else (1 if not all(flags) else 0)


SPLITS = {"2007": ("train", "val", "trainval", "test"), "2012": ("train", "val", "trainval")}


def test_world_has_the_hard_cases(voc):
    _, truth = voc
    objects = [o for im in truth.values() for o in im["objects"]]
    assert sum(o["difficult"] for o in objects) >= 3
    assert sum(o["truncated"] for o in objects) >= 10
    assert sum(o["occluded"] for o in objects) >= 3
    assert len({o["class"] for o in objects}) == 20


@pytest.mark.parametrize("year", ["2007", "2012"])
def test_classification_labels_round_trip(voc, year):
    root, truth = voc
    zeros = 0
    for split in SPLITS[year]:
        ids, labels = voc_classification_labels(root, year, split)
        assert ids == read_id_list(voc_year_dir(root, year) / "ImageSets" / "Main" / f"{split}.txt")
        assert labels.shape == (len(ids), 20)
        for image_id, row in zip(ids, labels):
            objects = truth[(year, image_id)]["objects"]
            assert row.tolist() == [expected_label(objects, name) for name in VOC_CLASSES]
        zeros += int((labels == 0).sum())
    if year == "2007":
        assert zeros > 0  # some images hold only difficult instances of a class


@pytest.mark.parametrize("year", ["2007", "2012"])
def test_split_files_consistent(voc, year):
    root, truth = voc
    main = {s: set(read_id_list(voc_year_dir(root, year) / "ImageSets" / "Main" / f"{s}.txt")) for s in SPLITS[year]}
    assert main["train"] | main["val"] == main["trainval"] and not main["train"] & main["val"]
    if year == "2007":
        assert not main["test"] & main["trainval"]
        assert main["test"] | main["trainval"] == {i for (y, i) in truth if y == "2007"}
    segmented = {i for (y, i), im in truth.items() if y == year and im["segmented"]}
    for split in SPLITS[year]:
        seg = set(voc_segmentation_ids(root, year, split))
        assert seg <= main[split] and seg == segmented & main[split]


@pytest.mark.parametrize("year", ["2007", "2012"])
def test_detection_annotations_and_xml_fields_round_trip(voc, year):
    root, truth = voc
    for split in SPLITS[year]:
        ann = voc_detection_annotations(root / "VOCdevkit", year, split)
        for image_id, (boxes, labels, difficult) in ann.items():
            im = truth[(year, image_id)]
            assert boxes.dtype == np.float64 and boxes.shape == (len(im["objects"]), 4)
            np.testing.assert_array_equal(boxes, [o["box"] for o in im["objects"]])
            assert labels.tolist() == [VOC_CLASSES.index(o["class"]) for o in im["objects"]]
            assert difficult.tolist() == [o["difficult"] for o in im["objects"]]
            xml = parse_voc_xml(voc_year_dir(root, year) / "Annotations" / f"{image_id}.xml")
            assert xml["filename"] == f"{image_id}.jpg" and xml["segmented"] == im["segmented"]
            assert (xml["width"], xml["height"]) == (im["width"], im["height"])
            assert [o["truncated"] for o in xml["objects"]] == [o["truncated"] for o in im["objects"]]
            assert [o["pose"] for o in xml["objects"]] == [o["pose"] for o in im["objects"]]
            if year == "2012":
                assert [o["occluded"] for o in xml["objects"]] == [o["occluded"] for o in im["objects"]]
            jpg = cv2.imread(str(voc_image_path(root, year, image_id)))
            assert jpg.shape == (im["height"], im["width"], 3)
            # 1-based inclusive boxes lie inside the image
            assert (boxes[:, :2] >= 1).all() and (boxes[:, 2] <= im["width"]).all() and (boxes[:, 3] <= im["height"]).all()


def test_segmentation_masks_classes_and_void_borders(voc):
    root, truth = voc
    checked = 0
    for (year, image_id), im in truth.items():
        if not im["segmented"]:
            continue
        year_dir = voc_year_dir(root, year)
        assert Image.open(year_dir / "SegmentationClass" / f"{image_id}.png").mode == "P"
        cls = read_segmentation_mask(year_dir / "SegmentationClass" / f"{image_id}.png")
        inst = read_segmentation_mask(year_dir / "SegmentationObject" / f"{image_id}.png")
        assert cls.shape == (im["height"], im["width"]) and inst.shape == cls.shape
        present = {VOC_CLASSES.index(o["class"]) + 1 for o in im["objects"] if not o["difficult"]}
        values = set(np.unique(cls).tolist())
        assert values - {0, 255} <= present
        assert set(np.unique(inst).tolist()) - {0, 255} <= set(range(1, len(im["objects"]) + 1))
        # every class region is separated from anything else by a void (255) band
        for c in values - {0, 255}:
            region = (cls == c).astype(np.uint8)
            ring = cv2.dilate(region, np.ones((3, 3), np.uint8)).astype(bool) & ~region.astype(bool)
            assert set(np.unique(cls[ring]).tolist()) <= {255}
        # the instance map agrees with the class map on labelled pixels
        for k, o in enumerate(im["objects"], start=1):
            if not o["difficult"]:
                assert (cls[inst == k] == VOC_CLASSES.index(o["class"]) + 1).all()
        checked += 1
    assert checked > 20


def test_sbd_and_seg11valid(voc):
    root, truth = voc
    train, val = sbd_ids(root, "train"), sbd_ids(root / "benchmark_RELEASE", "val")
    assert not set(train) & set(val)
    assert all(("2012", i) in truth and int(i[:4]) <= 2011 for i in train + val)
    for image_id in train[:15] + val[:5]:
        seg = read_sbd_segmentation(sbd_dir(root) / "cls" / f"{image_id}.mat")
        im = truth[("2012", image_id)]
        assert seg.shape == (im["height"], im["width"]) and 255 not in seg
        # every annotated object has visible pixels, and SBD has no void: all its classes appear
        assert set(np.unique(seg).tolist()) - {0} == {VOC_CLASSES.index(o["class"]) + 1 for o in im["objects"]}
        if im["segmented"]:
            voc_mask = read_segmentation_mask(voc_year_dir(root, "2012") / "SegmentationClass" / f"{image_id}.png")
            keep = voc_mask != 255
            np.testing.assert_array_equal(seg[keep], voc_mask[keep])
    seg11 = voc_segmentation_ids(root, "2012", "seg11valid")
    assert set(seg11) <= set(voc_segmentation_ids(root, "2012", "val"))
    assert not set(seg11) & set(train) and all(int(i[:4]) <= 2011 for i in seg11)


def test_torchvision_reference_readers_open_the_folders(voc):
    import torchvision

    root, truth = voc
    for year, split in (("2012", "train"), ("2012", "val"), ("2007", "test")):
        det = torchvision.datasets.VOCDetection(str(root), year=year, image_set=split)
        for k in range(len(det)):
            image, target = det[k]
            image_id = target["annotation"]["filename"][:-4]
            assert image.size == (truth[(year, image_id)]["width"], truth[(year, image_id)]["height"])
            assert len(target["annotation"]["object"]) == len(truth[(year, image_id)]["objects"])
        seg = torchvision.datasets.VOCSegmentation(str(root), year=year, image_set=split)
        assert len(seg) == len(voc_segmentation_ids(root, year, split))
        for k in range(len(seg)):
            image, mask = seg[k]
            assert image.size == mask.size and mask.mode == "P"


def test_bad_input_is_named(voc, tmp_path):
    root, _ = voc
    copy = tmp_path / "VOCdevkit"
    shutil.copytree(root / "VOCdevkit" / "VOC2007", copy / "VOC2007")
    main = copy / "VOC2007" / "ImageSets" / "Main"
    (main / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="Main/val.txt: split file is missing"):
        voc_classification_labels(copy, "2007", "val")
    (main / "dog_train.txt").write_text((main / "dog_train.txt").read_text().replace(" -1", "  2", 1))
    with pytest.raises(DatasetFormatError, match=r"dog_train.txt:1: expected"):
        voc_classification_labels(copy, "2007", "train")
    first = read_id_list(main / "test.txt")[0]
    (copy / "VOC2007" / "Annotations" / f"{first}.xml").write_text("<annotation><object><name>dog</name>")
    with pytest.raises(DatasetFormatError, match=f"{first}.xml: malformed XML"):
        voc_detection_annotations(copy, "2007", "test")
    (copy / "VOC2007" / "JPEGImages" / f"{first}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=f"{first}.jpg: image listed in the split file is missing"):
        voc_image_path(copy, "2007", first)
    rgb = tmp_path / "colour.png"
    Image.new("RGB", (8, 8), (128, 0, 0)).save(rgb)
    with pytest.raises(DatasetFormatError, match="colour.png: expected palette"):
        read_segmentation_mask(rgb)
    with pytest.raises(FileNotFoundError, match="no VOC2010 folder"):
        voc_classification_labels(copy, "2010", "train")


def test_imagenet_tree_round_trip_and_torchvision(tmp_path):
    import torchvision

    write_imagenet_world(ImageNetWorldConfig(out=str(tmp_path), classes=4, train_per_class=5, val_per_class=2,
                                             workers=1), progress=False)
    samples, classes = imagenet_samples(tmp_path, "train")
    ref = torchvision.datasets.ImageFolder(str(tmp_path / "train"))
    assert classes == ref.classes and [(str(p), k) for p, k in samples] == ref.samples
    val, _ = imagenet_samples(tmp_path, "val")
    assert len(val) == 8 and all(p.name.startswith("ILSVRC2012_val_") and p.suffix == ".JPEG" for p, _ in val)
    with pytest.raises(FileNotFoundError, match="test"):
        imagenet_samples(tmp_path, "test")


def test_world_is_deterministic(tmp_path):
    cfg = dict(seed=9, voc07_trainval=6, voc07_test=4, voc12_trainval=6, workers=1)
    write_voc_world(VOCWorldConfig(out=str(tmp_path / "a"), **cfg), progress=False)
    write_voc_world(VOCWorldConfig(out=str(tmp_path / "b"), **cfg), progress=False)
    for rel in ("VOCdevkit/VOC2007/Annotations/000003.xml", "VOCdevkit/VOC2007/ImageSets/Main/cat_test.txt",
                "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    a, b = (json.loads((tmp_path / d / "world.json").read_text()) for d in "ab")
    assert a["config"].pop("out") != b["config"].pop("out") and a == b


def test_training_wrappers_follow_the_readers(voc):
    from cpfs_bench.evaluate.datasets import VOCClassification, VOCDetection, VOCSegmentation

    root, truth = voc
    cls = VOCClassification(root, "2007", "test")
    image, labels = cls[3]
    assert image.size == (truth[("2007", cls.ids[3])]["width"], truth[("2007", cls.ids[3])]["height"])
    np.testing.assert_array_equal(labels, voc_classification_labels(root, "2007", "test")[1][3])
    det = VOCDetection(root, "2012", "val")
    image, target = det[0]
    assert len(target["boxes"]) == len(truth[("2012", target["image_id"])]["objects"])
    for source, split in (("voc", "seg11valid"), ("sbd", "train")):
        seg = VOCSegmentation(root, "2012", split, source=source)
        image, mask = seg[0]
        assert mask.shape == (image.size[1], image.size[0]) and mask.dtype == np.uint8


def test_scene_layout_follows_its_config():
    """1..max_objects objects per image; centre_spread pulls objects to the image centre (world v3)
    and 0 spreads them over the whole image (v2)."""
    from cpfs_bench.bench.world.voc import draw_scene

    offsets, counts = {}, set()
    for spread in (0.0, 0.15):
        rng = np.random.default_rng(0)
        d = []
        for _ in range(60):
            _, objects = draw_scene(rng, 200, 300, max_objects=3, object_size=(0.3, 0.7), center_spread=spread)
            counts.add(len(objects))
            for o in objects:
                x1, y1, x2, y2 = o["box"]
                d.append(abs((x1 + x2) / 2 / 300 - 0.5) + abs((y1 + y2) / 2 / 200 - 0.5))
        offsets[spread] = float(np.mean(d))
    assert counts <= {1, 2, 3} and {1, 3} <= counts
    # box centres (visible extent): uniform centres ~0.4 off in x + y, normal with std 0.15 ~0.24
    assert offsets[0.15] < offsets[0.0] - 0.1, offsets
