"""pretrain/extract.py: `bench flow` on videos and frame folders."""
import json
import re
import shutil

import cv2
import numpy as np
import pytest

from cpfs_bench.bench.flowio import read_flow_png
from cpfs_bench.pretrain.extract import FlowConfig, extract_flow
from cpfs_bench.pretrain.flow import endpoint_error


def test_dis_flow_close_to_ground_truth(tiny_world, tiny_flow):
    errors, magnitudes = [], []
    for clip in ("clip_000", "clip_001"):
        meta = json.loads((tiny_flow / clip / "meta.json").read_text())
        assert meta["frames"] == 6 and meta["pairs"] == 5 and (meta["height"], meta["width"]) == (240, 320)
        for i in range(5):
            ours, valid = read_flow_png(tiny_flow / clip / "flow" / f"{i:06d}.png")
            truth, _ = read_flow_png(tiny_world / "gt_flow" / clip / f"{i:06d}.png")
            assert valid.all()
            errors.append(endpoint_error(ours, truth))
            magnitudes.append(np.linalg.norm(truth, axis=2).mean())
    epe = float(np.mean(errors))
    print(f"DIS medium end-point error on the embedded clips: {epe:.3f} px (mean |flow| {np.mean(magnitudes):.2f} px)")
    # measured 0.32 px over 24 clips; zero flow would score the mean magnitude (~2 px)
    assert epe < 0.6
    assert epe < 0.4 * np.mean(magnitudes)


def test_manifest_frames_and_resume(tiny_world, tiny_flow, tmp_path):
    manifest = json.loads((tiny_flow / "manifest.json").read_text())
    assert [v["name"] for v in manifest["videos"]] == ["clip_000", "clip_001"]
    assert cv2.imread(str(tiny_flow / "clip_000" / "frames" / "000005.jpg")).shape == (240, 320, 3)
    out = tmp_path / "flow"
    shutil.copytree(tiny_flow, out)
    shutil.rmtree(out / "clip_001")
    stamp = (out / "clip_000" / "flow" / "000000.png").stat().st_mtime_ns
    summary = extract_flow(FlowConfig(videos=[str(tiny_world / "videos")], out=str(out), workers=1), progress=False)
    assert summary["skipped"] == 1 and summary["processed"] == 1 and summary["failed"] == 0
    assert (out / "clip_000" / "flow" / "000000.png").stat().st_mtime_ns == stamp  # untouched
    assert (out / "clip_001" / "meta.json").exists()


def test_broken_video_listed_and_skipped(tiny_world, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(tiny_world / "videos" / "clip_000.mp4", videos / "good.mp4")
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    out = tmp_path / "out"
    summary = extract_flow(FlowConfig(videos=[str(videos)], out=str(out), method="dis-fast", workers=2), progress=False)
    assert summary["processed"] == 1 and summary["failed"] == 1
    failures = (out / "failures.txt").read_text().splitlines()
    assert len(failures) == 1 and failures[0].startswith("broken\t") and "broken.mp4\tfailed: " in failures[0]
    assert not (out / "broken").exists() and not list(out.glob(".*partial"))


def test_frame_folder_with_stride_and_resize(tiny_world, tmp_path):
    from cpfs_bench.pretrain.extract import VideoSource, read_frames

    frames = tmp_path / "seq"
    frames.mkdir()
    for i, f in enumerate(read_frames(VideoSource("c", str(tiny_world / "videos" / "clip_001.mp4"), "video"))):
        cv2.imwrite(str(frames / f"img_{i:03d}.png"), f)
    out = tmp_path / "out"
    extract_flow(FlowConfig(videos=[str(frames)], out=str(out), method="farneback", resize=(120, 160), stride=2,
                            workers=1), progress=False)
    meta = json.loads((out / "seq" / "meta.json").read_text())
    assert meta["frames"] == 3 and meta["pairs"] == 2 and (meta["height"], meta["width"]) == (120, 160)
    flow, _ = read_flow_png(out / "seq" / "flow" / "000001.png")
    assert flow.shape == (120, 160, 2) and np.abs(flow).max() > 0.1


def test_missing_input_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        extract_flow(FlowConfig(videos=[str(tmp_path / "nowhere")], out=str(tmp_path / "o")), progress=False)


def test_truncated_video_keeps_its_decodable_prefix(tmp_path):
    import av

    videos = tmp_path / "videos"
    videos.mkdir()
    # moov first (faststart), so a cut file still opens and decodes up to where its data ends
    container = av.open(str(tmp_path / "whole.mp4"), "w", options={"movflags": "faststart"})
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
    rng = np.random.default_rng(0)
    for _ in range(40):
        frame = av.VideoFrame.from_ndarray((rng.random((120, 160, 3)) * 255).astype(np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    data = (tmp_path / "whole.mp4").read_bytes()
    (videos / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])
    out = tmp_path / "out"
    summary = extract_flow(FlowConfig(videos=[str(videos)], out=str(out), method="dis-fast", workers=1), progress=False)
    assert summary["processed"] == 1 and summary["partial"] == 1 and summary["failed"] == 0
    meta = json.loads((out / "cut" / "meta.json").read_text())
    stopped = meta["partial"]["stopped_at_frame"]
    assert 2 <= stopped < 40 and meta["frames"] == stopped and meta["pairs"] == stopped - 1
    line = (out / "failures.txt").read_text().splitlines()[0]
    assert line.startswith("cut\t") and f"partial: decoding stopped at frame {stopped}" in line


def test_rerun_with_other_settings_is_refused(tiny_world, tiny_flow, tmp_path):
    out = tmp_path / "flow"
    shutil.copytree(tiny_flow, out)
    for change, named in (({"method": "farneback"}, "method: 'dis-medium' there, 'farneback' asked"),
                          ({"resize": (120, 160)}, "resize: None there, [120, 160] asked"),
                          ({"stride": 2}, "stride: 1 there, 2 asked")):
        with pytest.raises(ValueError, match=re.escape(named)):
            extract_flow(FlowConfig(videos=[str(tiny_world / "videos")], out=str(out), workers=1, **change),
                         progress=False)
    summary = extract_flow(FlowConfig(videos=[str(tiny_world / "videos")], out=str(out), workers=1), progress=False)
    assert summary["skipped"] == 2  # the same settings: resumed, nothing redone
