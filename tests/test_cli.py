"""The `bench` command end to end, as a user runs it (subprocesses, real exit codes)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image


def bench(*args, cwd=None, home=None):
    env = dict(os.environ, CPFS_BENCH_HOME=str(home or "/nonexistent-home-do-not-use"))
    return subprocess.run([sys.executable, "-m", "cpfs_bench.bench.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def test_usage_errors_exit_2():
    r = bench("pretrain", "--loss", "mse")
    assert r.returncode == 2 and "Invalid value for '--loss'" in r.stderr
    r = bench("pretrain", "--iters", "0")
    assert r.returncode == 2 and "Invalid value for '--iters'" in r.stderr
    r = bench("eval", "voc07-svm", "--ckpt", __file__, "--costs", "abc")
    assert r.returncode == 2 and "Invalid value for '--costs'" in r.stderr
    r = bench("pretrain", "--no-such-option")
    assert r.returncode == 2 and "No such option" in r.stderr


def test_data_folder_without_pairs_exit_1_one_line(tmp_path):
    r = bench("pretrain", "--data", tmp_path, "--out", tmp_path / "run")
    assert r.returncode == 1
    assert "no frame/flow pairs found" in r.stderr and "bench flow --videos" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.long
def test_world_flow_pretrain_all_losses(tmp_path):
    r = bench("world", "videos", "--out", tmp_path / "world", "--clips", "2", "--frames", "5")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "world" / "videos").iterdir()) == ["clip_000.mp4", "clip_001.mp4"]
    (tmp_path / "world" / "videos" / "zz_broken.mkv").write_bytes(b"garbage")
    r = bench("flow", tmp_path / "world" / "videos", "--out", tmp_path / "flow", "--method", "dis-fast")
    assert r.returncode == 0, r.stderr
    assert "2 videos processed" in r.stdout and "1 failed" in r.stdout and "zz_broken" in r.stderr
    manifest = json.loads((tmp_path / "flow" / "manifest.json").read_text())
    assert sum(v["pairs"] for v in manifest["videos"]) == 8
    for loss in ("kta", "ce", "ce-rev", "direct-cls"):
        out = tmp_path / f"run-{loss}"
        r = bench("pretrain", "--loss", loss, "--data", tmp_path / "flow", "--out", out, "--iters", 2,
                  "--batch-size", 2, "--pixels", 32, "--snapshot-every", 1)
        assert r.returncode == 0, r.stderr
        assert f"pretrain {loss}: steps 0->2" in r.stdout
        ckpt = torch.load(out / "last.pt", weights_only=True)
        assert ckpt["loss"] == loss and ckpt["step"] == 2
        assert (out / "step_000001.pt").exists() and len((out / "log.jsonl").read_text().splitlines()) == 2
        assert (out / "final.pt").exists() and (out / "config.json").exists()
    # the run's config.json reruns it; an option typed beside it wins
    r = bench("pretrain", "--config", tmp_path / "run-kta" / "config.json", "--iters", 3, "--resume")
    assert r.returncode == 0 and "steps 2->3" in r.stdout, r.stderr
    assert torch.load(tmp_path / "run-kta" / "last.pt", weights_only=True)["config"]["pixels"] == 32
    r = bench("pretrain", "--loss", "kta", "--arch", "caffenet", "--data", tmp_path / "flow", "--out",
              tmp_path / "run-kta", "--iters", 4, "--resume")
    assert r.returncode == 1 and "cannot resume" in r.stderr


@pytest.mark.slow
def test_flow_fails_when_nothing_processed(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"garbage")
    r = bench("flow", tmp_path / "v", "--out", tmp_path / "o")
    assert r.returncode == 1 and "no video could be processed" in r.stderr


def test_results_command_on_hand_made_records(tmp_path):
    from cpfs_bench.results.store import append_records, make_record

    store = tmp_path / "records.jsonl"
    append_records(store, [
        make_record("voc07_cls", "mAP", 40.04, method="CPFS-KTA", protocol="krahenbuhl16-voc07-cls"),
        make_record("voc07_cls", "mAP", 42.26, method="CPFS-KTA", protocol="krahenbuhl16-voc07-cls",
                    deviations={"iters": 500}),  # later record of the same cell wins
        make_record("imagenet_linear", "top1", 12.5, method="random", protocol="zhang17-linear-probe", layer="conv3"),
    ])
    r = bench("results", "--store", store, "--format", "md", "--table", "1")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("| ours"))
    assert "CPFS-KTA" in row and "42.3 [a]" in row and "40.0" not in row
    assert "krahenbuhl16-voc07-cls (deviations: iters=500)" in r.stdout
    assert "| paper |  | CPFS-KTA | - | Optical-flow | Self | 65.3 | 50.5 | 41.5 |" in r.stdout
    assert "dataset not recorded" in r.stdout  # hand-made records say nothing of their dataset
    r = bench("results", "--store", store, "--method", "nope")
    assert r.returncode == 1 and "no records of method 'nope'" in r.stderr and "CPFS-KTA, random" in r.stderr
    r = bench("results", "--store", store, "--run", "random", "--table", "2")
    assert r.returncode == 0 and "12.5" in r.stdout and "CPFS-KTA  " not in r.stdout.split("=====")[-1]
    r = bench("results", "--store", store, "--table", "2", "--format", "csv", "--plot", tmp_path / "probes.png")
    assert r.returncode == 0, r.stderr
    ours = [line for line in r.stdout.splitlines() if line.startswith("2,ours")]
    assert len(ours) == 1 and ",12.5," in ours[0]
    assert (tmp_path / "probes.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_world_voc_and_imagenet_commands(tmp_path):
    r = bench("world", "voc", "--out", tmp_path / "voc", "--voc07-trainval", 6, "--voc07-test", 4,
              "--voc12-trainval", 8)
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "voc" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()) == 4
    r = bench("world", "imagenet", "--out", tmp_path / "inet", "--classes", 3, "--train-per-class", 2,
              "--val-per-class", 1)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "inet" / "val").glob("*/*.JPEG"))) == 3


def test_version_and_help_summaries_whole():
    r = bench("--version")
    assert r.returncode == 0 and r.stdout.startswith("cpfs-bench, version ")
    r = bench("--help")
    assert r.returncode == 0
    commands = r.stdout.split("Commands:")[1].strip().splitlines()
    assert [c.split()[0] for c in commands] == ["baseline", "eval", "export", "flow", "import", "pretrain",
                                                "proposals", "reproduce", "results", "viz", "world"]
    assert not any(line.rstrip().endswith("...") for line in commands)
    r = bench("eval", "linear-probe", "--help")
    assert "[default: 28; x>=1]" in " ".join(r.stdout.split()) or "default: 28" in r.stdout
    assert "smoke preset: 3" in r.stdout and "smoke preset: 32" in r.stdout


def test_baseline_random_command(tmp_path):
    r = bench("baseline", "random", "--out", tmp_path / "r.pt", "--seed", 2)
    assert r.returncode == 0 and "baseline random (caffenet_bn, seed 2)" in r.stdout, r.stderr
    ckpt = torch.load(tmp_path / "r.pt", weights_only=True)
    assert ckpt["loss"] == "random" and ckpt["config"]["seed"] == 2
    r = bench("baseline", "supervised", "--epochs", "0")
    assert r.returncode == 2 and "Invalid value for '--epochs'" in r.stderr


def test_baseline_random_rescaled_command(tiny_imagenet, tmp_path):
    r = bench("baseline", "random-rescaled", "--out", tmp_path / "rr.pt", "--images", tiny_imagenet / "train",
              "--arch", "caffenet", "--batches", 2, "--batch-size", 4, "--bias", 0.2)
    assert r.returncode == 0 and "random-rescaled (caffenet, seed 0): 8 images" in r.stdout, r.stderr
    ckpt = torch.load(tmp_path / "rr.pt", weights_only=True)
    assert ckpt["loss"] == "random-rescaled" and ckpt["config"]["bias"] == 0.2 and ckpt["config"]["images_used"] == 8
    r = bench("baseline", "random-rescaled", "--out", tmp_path / "x.pt", "--images", tmp_path)
    assert r.returncode == 1 and "no image files" in r.stderr and str(tmp_path) in r.stderr


@pytest.mark.long  # ~20-30 s on 2 cores: out of the README suite's 8-minute budget
def test_proposals_and_voc07_det_commands(tmp_path):
    r = bench("world", "voc", "--out", tmp_path / "voc", "--voc07-trainval", 3, "--voc07-test", 2,
              "--voc12-trainval", 2)
    assert r.returncode == 0, r.stderr
    r = bench("proposals", "--voc", tmp_path / "voc", "--split", "trainval,test", "--out", tmp_path / "props",
              home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    assert "trainval: 3 images" in r.stdout and "test: 2 images" in r.stdout
    assert sorted(p.name for p in (tmp_path / "props").iterdir()) == ["voc_2007_test.mat", "voc_2007_trainval.mat"]
    r = bench("eval", "voc07-det", "--voc", tmp_path / "voc")
    assert r.returncode == 2 and "Missing option '--ckpt'" in r.stderr
    ckpt = tmp_path / "random.pt"
    assert bench("baseline", "random", "--out", ckpt).returncode == 0
    r = bench("eval", "voc07-det", "--ckpt", ckpt, "--voc", tmp_path / "voc", "--proposals", tmp_path / "nowhere")
    assert r.returncode == 2 and "nowhere" in r.stderr and "does not exist" in r.stderr
    r = bench("eval", "voc07-det", "--ckpt", ckpt, "--voc", tmp_path / "voc", "--proposals", tmp_path / "props",
              "--iters", 1, "--train-scales", "227,250", "--test-scale", 227, "--out", tmp_path / "det",
              "--store", tmp_path / "records.jsonl", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    assert "VOC07 detection mAP" in r.stdout
    record = json.loads((tmp_path / "records.jsonl").read_text().splitlines()[0])
    assert record["task"] == "voc07_det" and record["deviations"]["train_scales"] == [227, 250]
    assert len(list((tmp_path / "det" / "comp4").glob("comp4_det_test_*.txt"))) == 20


@pytest.mark.long  # ~20-30 s on 2 cores: out of the README suite's 8-minute budget
def test_import_and_export_torchvision_commands(tmp_path):
    from torchvision.models import alexnet

    torch.save(alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")
    r = bench("import", "torchvision", "--weights", tmp_path / "alexnet.pth", "--out", tmp_path / "tv.pt")
    assert r.returncode == 0 and "imported torchvision alexnet" in r.stdout, r.stderr
    r = bench("export", "torchvision", "--ckpt", tmp_path / "tv.pt", "--out", tmp_path / "back.pth")
    assert r.returncode == 0 and (tmp_path / "back.pth").exists(), r.stderr
    assert bench("baseline", "random", "--out", tmp_path / "c.pt").returncode == 0
    r = bench("export", "torchvision", "--ckpt", tmp_path / "c.pt", "--out", tmp_path / "x.pth")
    assert r.returncode == 1 and "conv1 weights are (96, 3, 11, 11) here" in r.stderr


def test_import_caffe_command(tmp_path):
    from caffe_files import CAFFENET, prototxt, write_caffenet

    deploy, model = write_caffenet(tmp_path / "caffe")
    r = bench("import", "caffe", "--prototxt", deploy, "--caffemodel", model, "--out", tmp_path / "c.pt",
              "--mean-values", "104,117,123", "--scale", "0.5")
    assert r.returncode == 0, r.stderr
    assert "input BGR 0-255 minus [104.0, 117.0, 123.0]" in r.stdout and "x 0.5" in r.stdout
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    assert ckpt["arch"] == "caffenet" and ckpt["extra"]["normalization"]["std"] == [1 / 127.5] * 3
    spec = [(s, "BatchNorm", b, "") if s == "relu1" else (s, k, b, p) for s, k, b, p in CAFFENET]
    (tmp_path / "bn.prototxt").write_text(prototxt(spec=spec))
    r = bench("import", "caffe", "--prototxt", tmp_path / "bn.prototxt", "--caffemodel", model,
              "--out", tmp_path / "x.pt")
    assert r.returncode == 1 and "relu1" in r.stderr and "BatchNorm" in r.stderr, r.stderr


def test_viz_command_usage(tmp_path):
    assert bench("baseline", "random", "--out", tmp_path / "r.pt").returncode == 0
    r = bench("viz", "--ckpt", tmp_path / "r.pt")
    assert r.returncode == 2 and "give either --frame" in r.stderr
    Image.new("RGB", (64, 64)).save(tmp_path / "f.png")
    r = bench("viz", "--ckpt", tmp_path / "r.pt", "--frame", tmp_path / "f.png", "--pixels", "1;2")
    assert r.returncode == 2 and "'x,y;x,y'" in r.stderr
    r = bench("viz", "--ckpt", tmp_path / "r.pt", "--frame", tmp_path / "f.png")
    assert r.returncode == 1 and "not a `bench pretrain` checkpoint" in r.stderr


def test_help_imports_no_model_code():
    """`bench --help` and every `bench X --help` build from the torch-free config dataclasses: no torch,
    torchvision or OpenCV is imported (benchmarks/cli_startup.py times them: ~0.3 s against ~5 s before)."""
    probe = ("import sys, runpy\n"
             "sys.argv = ['bench', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('cpfs_bench.bench.cli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'torchvision', 'cv2', 'sklearn', 'pandas') if m in sys.modules))")
    for args in ([], ["eval", "voc07-det"], ["eval", "linear-probe"], ["pretrain"], ["baseline", "supervised"],
                 ["reproduce"], ["flow"], ["world", "voc"], ["proposals"], ["results"]):
        r = subprocess.run([sys.executable, "-c", probe, *args, "--help"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "Usage:" in r.stdout and r.stdout.strip().splitlines()[-1] == "[]", (args, r.stdout[-300:])


@pytest.mark.parametrize("command", ["linear-probe", "voc07-svm", "voc07-cls", "voc07-det", "voc12-seg"])
def test_a_bad_checkpoint_fails_before_the_default_world_is_written(command, tmp_path):
    """A new user's first mistake: a text file as --ckpt. One line, exit 1, and nothing written into
    $CPFS_BENCH_HOME (the embedded world costs minutes to write; the checkpoint is read first)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    home = tmp_path / "home"
    out = [] if command == "voc07-svm" else ["--out", tmp_path / "run"]  # (the SVMs keep no run folder)
    r = bench("eval", command, "--ckpt", notes, *out, home=home)
    assert r.returncode == 1, r.stderr
    assert "notes.txt: not a PyTorch checkpoint" in r.stderr and "Traceback" not in r.stderr
    assert not (home / "world").exists()
