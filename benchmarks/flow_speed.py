"""Flow extraction speed: the whole `bench flow` pipeline vs OpenCV DIS alone on the same frames.

Prints ms per frame pair (wall clock, every core busy in both cases) and a per-stage breakdown on one
core. Target (shared/TARGETS.md): pipeline within 1.2x of DIS alone.

    python benchmarks/flow_speed.py [--clips 8] [--method dis-medium]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from cpfs_bench.bench.flowio import encode_flow_png
from cpfs_bench.bench.world.videos import VideoWorldConfig, write_video_world
from cpfs_bench.pretrain.extract import FlowConfig, VideoSource, extract_flow, read_frames
from cpfs_bench.pretrain.flow import make_flow_estimator


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--method", default="dis-medium")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="flow-bench-"))
    try:
        write_video_world(VideoWorldConfig(out=str(work / "world"), clips=args.clips, frames=args.frames), progress=False)
        videos = sorted((work / "world" / "videos").glob("*.mp4"))
        frames = [list(read_frames(VideoSource(v.stem, str(v), "video"))) for v in videos]
        grays = [[cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in clip] for clip in frames]
        pairs = sum(len(g) - 1 for g in grays)

        # DIS alone, every core: one thread per core, each running whole clips (as the pipeline does)
        cv2.setNumThreads(1)

        def dis_clip(clip):
            estimate = make_flow_estimator(args.method)
            for a, b in zip(clip[:-1], clip[1:]):
                estimate(a, b)

        t = time.perf_counter()
        with ThreadPoolExecutor(cores) as pool:
            list(pool.map(dis_clip, grays))
        dis_parallel = (time.perf_counter() - t) / pairs * 1e3
        # DIS alone with OpenCV's own threading, pairs one after another
        cv2.setNumThreads(cores)
        estimate = make_flow_estimator(args.method)
        t = time.perf_counter()
        for clip in grays:
            for a, b in zip(clip[:-1], clip[1:]):
                estimate(a, b)
        dis_threads = (time.perf_counter() - t) / pairs * 1e3

        # the whole pipeline: decode, JPEG, flow, PNG, files, manifest
        t = time.perf_counter()
        summary = extract_flow(FlowConfig(videos=[str(work / "world" / "videos")], out=str(work / "flow"),
                                          method=args.method), progress=False)
        assert summary["pairs"] == pairs
        pipeline = (time.perf_counter() - t) / pairs * 1e3

        # per-stage costs on one core
        cv2.setNumThreads(1)
        estimate = make_flow_estimator(args.method)
        clip, gray = frames[0], grays[0]
        stages = {}
        t = time.perf_counter()
        list(read_frames(VideoSource("v", str(videos[0]), "video")))
        stages["decode (PyAV)"] = (time.perf_counter() - t) / len(clip)
        t = time.perf_counter()
        for f in clip:
            cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])
        stages["JPEG encode"] = (time.perf_counter() - t) / len(clip)
        t = time.perf_counter()
        flows = [estimate(a, b) for a, b in zip(gray[:-1], gray[1:])]
        stages[f"flow ({args.method})"] = (time.perf_counter() - t) / len(flows)
        t = time.perf_counter()
        for f in flows:
            encode_flow_png(f)
        stages["flow PNG encode (ours)"] = (time.perf_counter() - t) / len(flows)
        for level, label in ((None, "default"), (1, "level 1, fastest zlib")):
            t = time.perf_counter()
            for f in flows:
                img = np.dstack([np.ones(f.shape[:2]), f[..., 1] * 64 + 2**15, f[..., 0] * 64 + 2**15]).astype(np.uint16)
                cv2.imencode(".png", img, [] if level is None else [cv2.IMWRITE_PNG_COMPRESSION, level])
            stages[f"flow PNG encode (cv2 {label})"] = (time.perf_counter() - t) / len(flows)

        print(f"\n{len(videos)} clips, {pairs} pairs of {frames[0][0].shape[1]}x{frames[0][0].shape[0]}, {cores} cores")
        print(f"| {'measurement':<46} | {'ms/pair':>8} |")
        print(f"|{'-' * 48}|{'-' * 10}|")
        print(f"| {'DIS alone, one clip per core':<46} | {dis_parallel:8.2f} |")
        print(f"| {'DIS alone, OpenCV threads, pairs in sequence':<46} | {dis_threads:8.2f} |")
        print(f"| {'bench flow pipeline (all stages, all cores)':<46} | {pipeline:8.2f} |")
        best = min(dis_parallel, dis_threads)
        print(f"| {'ratio pipeline / best DIS alone (target <= 1.2)':<46} | {pipeline / best:8.2f} |")
        print("\nper stage, one core, ms per frame or pair:")
        for k, v in stages.items():
            print(f"  {k:<46} {v * 1e3:7.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
