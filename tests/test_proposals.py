"""evaluate/proposals.py: Fast R-CNN's proposal .mat format (against a hand-made file in the published
layout), selective search on a known scene, resumable cached computation, mismatched image lists."""
import json

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from cpfs_bench.bench.world.voc import VOCWorldConfig, write_voc_world
from cpfs_bench.evaluate.datasets import read_id_list, voc_year_dir
from cpfs_bench.evaluate.proposals import (
    ProposalFormatError,
    compute_proposals,
    load_proposals,
    read_proposals_mat,
    selective_search,
    write_proposals_mat,
)


def test_reads_a_file_in_the_published_layout(tmp_path):
    """As selective_search_data/voc_2007_*.mat: 1 x N cells of 1-based (y1, x1, y2, x2) doubles."""
    boxes = np.empty((1, 2), dtype=object)
    boxes[0, 0] = np.array([[1, 1, 375, 500], [20, 48, 130, 195]], float)  # y1 x1 y2 x2
    boxes[0, 1] = np.array([[5, 7, 9, 11]], float)
    images = np.empty((1, 2), dtype=object)
    images[0, 0], images[0, 1] = "000005", "000007"
    savemat(tmp_path / "voc_2007_test.mat", {"boxes": boxes, "images": images})
    ids, read = read_proposals_mat(tmp_path / "voc_2007_test.mat")
    assert ids == ["000005", "000007"]
    # 0-based (x1, y1, x2, y2), as Fast R-CNN's pascal_voc.py: boxes[:, (1, 0, 3, 2)] - 1
    assert read[0].tolist() == [[0, 0, 499, 374], [47, 19, 194, 129]]
    assert read[1].tolist() == [[6, 4, 10, 8]]


def test_writer_round_trips_and_writes_the_published_layout(tmp_path):
    boxes = [np.array([[0, 0, 499, 374], [47, 19, 194, 129]], float), np.zeros((0, 4)), np.array([[6, 4, 10, 8.]])]
    path = write_proposals_mat(tmp_path / "voc_2007_trainval.mat", ["a", "b", "c"], boxes)
    ids, read = read_proposals_mat(path)
    assert ids == ["a", "b", "c"] and all(np.array_equal(x, y) for x, y in zip(read, boxes))
    raw = loadmat(str(path))
    assert raw["boxes"].shape == (1, 3) and raw["boxes"][0, 0].tolist() == [[1, 1, 375, 500], [20, 48, 130, 195]]


def test_bad_files_name_the_file_and_the_split(tmp_path):
    savemat(tmp_path / "nothing.mat", {"rects": np.zeros((2, 4))})
    with pytest.raises(ProposalFormatError, match="nothing.mat.*no 'boxes'"):
        read_proposals_mat(tmp_path / "nothing.mat")
    write_proposals_mat(tmp_path / "p.mat", ["a", "b"], [np.zeros((1, 4)), np.zeros((1, 4))])
    with pytest.raises(ProposalFormatError, match=r"p\.mat.*do not match the 3 of .*test\.txt.*missing \['c'\]"):
        load_proposals(tmp_path / "p.mat", ["a", "b", "c"], tmp_path / "test.txt")
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        read_proposals_mat(tmp_path / "missing.mat")


def test_selective_search_finds_a_plain_rectangle():
    image = np.full((120, 160, 3), 40, np.uint8)
    image[30:80, 50:130] = (30, 200, 90)  # x 50..129, y 30..79
    boxes = selective_search(image, "fast")
    assert boxes.shape[1] == 4 and len(np.unique(boxes, axis=0)) == len(boxes)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 159).all() and (boxes[:, 3] <= 119).all()
    assert ((boxes == [50, 30, 129, 79]).all(1)).any(), boxes[:10]


def test_computation_is_cached_and_resumes_from_its_chunks(tmp_path):
    voc = tmp_path / "voc"
    write_voc_world(VOCWorldConfig(out=str(voc), voc07_trainval=4, voc07_test=30, voc12_trainval=2, workers=1),
                    progress=False)
    ids = read_id_list(voc_year_dir(voc, "2007") / "ImageSets" / "Main" / "test.txt")
    path = compute_proposals(voc, "2007", "test", workers=1, cache=tmp_path / "cache", progress=False)
    meta = json.loads((path.parent / "proposals.json").read_text())
    assert meta["images"] == len(ids) and meta["computed_images"] == len(ids) and path.name == "voc_2007_test.mat"
    file_ids, boxes = read_proposals_mat(path)
    assert file_ids == ids and all(len(b) > 10 for b in boxes)
    # a crash after the first chunk: the rerun computes only the rest, and gets the same boxes
    first = path.parent / "chunk-00000.npz"
    from cpfs_bench.evaluate import proposals

    write_chunk = {"paths": [str(voc_year_dir(voc, "2007") / "JPEGImages" / f"{i}.jpg")
                             for i in ids[:proposals.CHUNK_IMAGES]], "mode": "fast", "out": str(first)}
    path.unlink()
    proposals._chunk_worker(write_chunk)
    again = compute_proposals(voc, "2007", "test", workers=1, cache=tmp_path / "cache", progress=False)
    meta = json.loads((again.parent / "proposals.json").read_text())
    assert meta["computed_images"] == len(ids) - proposals.CHUNK_IMAGES
    assert all(np.array_equal(a, b) for a, b in zip(read_proposals_mat(again)[1], boxes))
    # a cached file is returned as is
    assert compute_proposals(voc, "2007", "test", workers=1, cache=tmp_path / "cache", progress=False) == again


def test_two_runs_started_together_compute_the_proposals_once(tmp_path, monkeypatch):
    """Two evaluations needing the same proposals at once: before the lock, both computed every chunk and
    one then read chunks the other had merged and deleted (FileNotFoundError, seen with two voc07-det
    runs). Now the second waits and returns the first one's file."""
    import threading

    from cpfs_bench.evaluate import proposals

    voc = tmp_path / "voc"
    write_voc_world(VOCWorldConfig(out=str(voc), voc07_trainval=2, voc07_test=8, voc12_trainval=2, workers=1),
                    progress=False)
    computed, worker = [], proposals._chunk_worker
    monkeypatch.setattr(proposals, "_chunk_worker", lambda job: computed.append(job["out"]) or worker(job))
    start, results, errors = threading.Barrier(2), [], []

    def run():
        start.wait()
        try:
            results.append(compute_proposals(voc, "2007", "test", workers=1, cache=tmp_path / "cache", progress=False))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0] == results[1] and results[0].exists(), errors
    assert len(computed) == 1, computed  # 8 images: one chunk, computed once
