"""The `bench` command. Thin: parse flags into a command's config dataclass and call one function.

Exit codes: 0 done, 1 failed (the message names the cause and the file), 2 usage error.
"""
from __future__ import annotations

import functools
from dataclasses import fields

import click

from pretrain.flow import METHODS
from pretrain.losses import LOSSES


def fails_cleanly(fn):
    """Turn the errors our code raises for bad input into one-line messages with exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from bench.checkpoint import CheckpointError
        from pretrain.train import TrainingDiverged

        try:
            return fn(*args, **kwargs)
        except (ValueError, OSError, CheckpointError, TrainingDiverged) as e:
            raise click.ClickException(str(e)) from e

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main():
    """cpfs-bench: CPFS pretraining and self-supervised evaluation benchmarks."""


@main.group()
def world():
    """Write the embedded default data (synthetic, in the real formats)."""


@world.command("videos")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write into.")
@click.option("--seed", default=0, show_default=True)
@click.option("--clips", default=24, show_default=True)
@click.option("--frames", default=32, show_default=True)
@click.option("--height", default=240, show_default=True)
@click.option("--width", default=320, show_default=True)
@click.option("--workers", default=0, show_default=True, help="Processes; 0 = every core.")
@fails_cleanly
def world_videos(**kw):
    """Short clips of textured objects moving (translation, rotation, scaling) over a moving textured
    background, with the exact forward flow of every frame pair (KITTI PNG, gt_flow/)."""
    from bench.world.videos import VideoWorldConfig, write_video_world

    out = write_video_world(VideoWorldConfig(**kw))
    click.echo(f"wrote {kw['clips']} clips x {kw['frames']} frames to {out}/videos, ground-truth flow in {out}/gt_flow")


@world.command("voc")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write into.")
@click.option("--seed", default=0, show_default=True)
@click.option("--voc07-trainval", default=250, show_default=True, help="VOC2007 trainval images.")
@click.option("--voc07-test", default=250, show_default=True, help="VOC2007 test images.")
@click.option("--voc12-trainval", default=250, show_default=True, help="VOC2012 trainval images (SBD drawn from them).")
@click.option("--workers", default=0, show_default=True, help="Processes; 0 = every core.")
@fails_cleanly
def world_voc(out, seed, voc07_trainval, voc07_test, voc12_trainval, workers):
    """VOCdevkit/VOC2007 and VOC2012 (JPEGImages, Annotations, ImageSets, SegmentationClass/Object)
    and SBD (benchmark_RELEASE/dataset) in the real layouts, with procedurally drawn objects of the 20
    VOC classes; truncated/difficult flags and 255 borders follow the geometry."""
    from bench.world.voc import VOCWorldConfig, write_voc_world

    root = write_voc_world(VOCWorldConfig(out=out, seed=seed, voc07_trainval=voc07_trainval, voc07_test=voc07_test,
                                          voc12_trainval=voc12_trainval, workers=workers))
    click.echo(f"wrote VOC2007 ({voc07_trainval} trainval + {voc07_test} test), VOC2012 ({voc12_trainval} trainval) "
               f"and SBD to {root}")


@world.command("imagenet")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write into.")
@click.option("--seed", default=0, show_default=True)
@click.option("--classes", default=20, show_default=True)
@click.option("--train-per-class", default=60, show_default=True)
@click.option("--val-per-class", default=15, show_default=True)
@click.option("--size", default=160, show_default=True, help="Image side in pixels.")
@click.option("--workers", default=0, show_default=True, help="Processes; 0 = every core.")
@fails_cleanly
def world_imagenet(**kw):
    """An ImageNet-style class-folder tree: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""
    from bench.world.imagenet import ImageNetWorldConfig, write_imagenet_world

    root = write_imagenet_world(ImageNetWorldConfig(**kw))
    click.echo(f"wrote {kw['classes']} classes x ({kw['train_per_class']} train + {kw['val_per_class']} val) images to {root}")


@main.command("flow")
@click.option("--videos", required=True, multiple=True, type=click.Path(exists=True),
              help="Video files (mp4, avi, mkv, webm, mov), frame folders, or folders of either. Repeatable.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--method", type=click.Choice(METHODS), default="dis-medium", show_default=True)
@click.option("--resize", nargs=2, type=int, default=None, metavar="H W", help="Resize frames first.")
@click.option("--stride", default=1, show_default=True, help="Keep every k-th frame.")
@click.option("--workers", default=0, show_default=True, help="Processes (one video each); 0 = every core.")
@click.option("--max-frames", type=int, default=None, help="Stop each video after this many kept frames.")
@fails_cleanly
def flow_cmd(videos, out, method, resize, stride, workers, max_frames):
    """Compute optical flow of videos: frames as JPEG, flow as KITTI 16-bit PNG, plus a manifest.

    Resumable: finished videos are skipped. Undecodable videos are listed in OUT/failures.txt and
    skipped; the command fails only if nothing could be processed."""
    from pretrain.extract import FlowConfig, extract_flow

    s = extract_flow(FlowConfig(list(videos), out, method, tuple(resize) if resize else None, stride, workers, max_frames))
    click.echo(f"flow: {s['processed']} videos processed, {s['skipped']} already done, {s['failed']} failed; "
               f"{s['pairs']} pairs in {s['seconds']:.1f}s -> {s['out']}")
    if s["failed"]:
        click.echo(f"failures listed in {s['out']}/failures.txt", err=True)
    if s["processed"] + s["skipped"] == 0:
        raise click.ClickException(f"no video could be processed (see {s['out']}/failures.txt)")


def _pretrain_options(fn):
    from pretrain.train import PretrainConfig

    defaults = {f.name: f.default for f in fields(PretrainConfig)}
    options = [
        click.option("--loss", type=click.Choice(LOSSES), default=defaults["loss"], show_default=True),
        click.option("--data", type=click.Path(), default=None,
                     help="A `bench flow` output folder. Default: the embedded video world (built on first use)."),
        click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder [runs/pretrain-<loss>]."),
        click.option("--arch", type=click.Choice(["caffenet_bn", "caffenet"]), default=defaults["arch"], show_default=True),
        click.option("--iters", type=int, default=defaults["iters"], show_default=True),
        click.option("--batch-size", type=int, default=defaults["batch_size"], show_default=True),
        click.option("--pixels", type=int, default=defaults["pixels"], show_default=True, help="Sampled pixels per image."),
        click.option("--hidden", type=int, default=defaults["hidden"], show_default=True, help="Head MLP hidden width."),
        click.option("--embed-dim", type=int, default=defaults["embed_dim"], show_default=True),
        click.option("--classes", type=int, default=defaults["classes"], show_default=True, help="direct-cls codebook size."),
        click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default=defaults["optimizer"], show_default=True),
        click.option("--lr", type=float, default=defaults["lr"], show_default=True),
        click.option("--momentum", type=float, default=defaults["momentum"], show_default=True),
        click.option("--weight-decay", type=float, default=defaults["weight_decay"], show_default=True),
        click.option("--schedule", type=click.Choice(["cosine", "step", "constant"]), default=defaults["schedule"], show_default=True),
        click.option("--sigma", type=float, default=defaults["sigma"], show_default=True, help="Initial flow-kernel sigma."),
        click.option("--learn-sigma/--fixed-sigma", default=defaults["learn_sigma"], show_default=True),
        click.option("--squash/--no-squash", default=defaults["squash"], show_default=True,
                     help="Squash flow as sign(f) min(log(|f|+1)/log(51), 1)."),
        click.option("--seed", type=int, default=defaults["seed"], show_default=True),
        click.option("--device", default=defaults["device"], show_default=True, help="auto, cpu or cuda[:N]."),
        click.option("--amp/--no-amp", default=defaults["amp"], show_default=True, help="bf16 autocast on CUDA."),
        click.option("--workers", type=int, default=None, help="Data-loading processes [0 on CPU, 8 on CUDA]."),
        click.option("--ckpt-every", type=int, default=defaults["ckpt_every"], show_default=True),
        click.option("--snapshot-every", type=int, default=defaults["snapshot_every"], show_default=True),
        click.option("--log-every", type=int, default=defaults["log_every"], show_default=True),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command("pretrain")
@_pretrain_options
@fails_cleanly
def pretrain_cmd(**kw):
    """CPFS pretraining of a CaffeNet AlexNet: KTA, CE, CE-rev, or the direct-cls baseline.

    Writes OUT/last.pt (resumable), OUT/step_*.pt snapshots, OUT/log.jsonl and OUT/loss.png."""
    from pretrain.train import PretrainConfig, run

    s = run(PretrainConfig(**kw))
    click.echo(f"pretrain {kw['loss']}: steps {s['start_step']}->{s['steps']}, loss {s['first_loss']:.4f} -> "
               f"{s['last_loss']:.4f} in {s['seconds']:.0f}s on {s['device']}; checkpoint {s['checkpoint']}"
               if s["first_loss"] is not None else f"pretrain {kw['loss']}: nothing to do, {s['checkpoint']} is at step {s['steps']}")


@main.group("eval")
def eval_group():
    """Evaluate a checkpoint on a transfer benchmark; every number is appended to the results store."""


@eval_group.command("linear-probe")
@click.option("--ckpt", required=True, type=click.Path(exists=True, dir_okay=False),
              help="cpfs-bench checkpoint, or a plain CaffeNet or torchvision AlexNet state_dict.")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="ImageNet root (train/<wnid>/, val/<wnid>/). Default: the embedded world, with --preset smoke.")
@click.option("--layers", default=",".join(("conv1", "conv2", "conv3", "conv4", "conv5")), show_default=True)
@click.option("--pooling", type=click.Choice(["avg", "bilinear"]), default="avg", show_default=True,
              help="avg = FAIR/VISSL pooling; bilinear = Zhang et al.'s resize.")
@click.option("--epochs", type=int, default=28, show_default=True, help="The lr drops (8/16/24 of 28) scale with it.")
@click.option("--lr", type=float, default=0.01, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--preset", type=click.Choice(["smoke"]), default=None,
              help="smoke: 3 epochs, batch 32 (recorded as a deviation); the embedded world's default.")
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=int, default=None, help="Data-loading processes [0 on CPU, 8 on CUDA].")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Probe run folder [runs/linear-probe-<ckpt>].")
@click.option("--resume", is_flag=True, help="Continue the probe run in --out.")
@click.option("--store", type=click.Path(dir_okay=False), default=None, help="Results records file.")
@click.option("--method", default=None, help="Row name in the tables [from the checkpoint].")
@fails_cleanly
def eval_linear_probe(layers, **kw):
    """ImageNet per-layer linear probes on the frozen trunk (paper Table 2), all layers in one pass:
    avg-pooled conv1..conv5 (~9k dims) -> BatchNorm (no affine) -> linear; SGD 0.01, momentum 0.9,
    wd 5e-4, batch 256, 28 epochs, lr x0.1 at 8/16/24; top-1/top-5 on val."""
    from evaluate.linear_probe import ProbeConfig, run

    s = run(ProbeConfig(layers=tuple(x.strip() for x in layers.split(",") if x.strip()), **kw))
    for layer, sc in s["scores"].items():
        click.echo(f"{layer}: top-1 {sc['top1']:.1f}%  top-5 {sc['top5']:.1f}%  ({s['dims'][layer]} dims)")
    click.echo(f"linear-probe {s['method']}: records appended to {s['store']}"
               + (f" (deviations: {s['deviations']})" if s["deviations"] else ""))
    click.echo(f"per-layer plot beside the paper's curves: {s['figure']}; training log: {s['log']}")


@eval_group.command("voc07-svm")
@click.option("--ckpt", required=True, type=click.Path(exists=True, dir_okay=False),
              help="cpfs-bench checkpoint, or a plain CaffeNet or torchvision AlexNet state_dict.")
@click.option("--voc", type=click.Path(file_okay=False), default=None,
              help="VOCdevkit root (or its parent). Default: the embedded world.")
@click.option("--layers", default=",".join(("conv1", "conv2", "conv3", "conv4", "conv5")), show_default=True)
@click.option("--pooling", type=click.Choice(["avg", "bilinear"]), default="avg", show_default=True)
@click.option("--costs", default=None, help="Comma-separated C sweep [Goyal et al.'s 26 costs].")
@click.option("--preset", type=click.Choice(["smoke"]), default=None,
              help="smoke: costs 0.01,0.1,1,10 only, a quick look (recorded as a deviation).")
@click.option("--workers", type=int, default=0, show_default=True, help="SVM processes; 0 = every core.")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Feature cache [$CPFS_BENCH_HOME/cache/features].")
@click.option("--store", type=click.Path(dir_okay=False), default=None, help="Results records file.")
@click.option("--method", default=None, help="Row name in the tables [from the checkpoint].")
@click.option("--device", default="cpu", show_default=True)
@fails_cleanly
def eval_voc07_svm(layers, costs, **kw):
    """VOC07 per-layer linear SVMs (Goyal et al. 2019): pooled conv1..conv5 features of trainval/test
    (extracted once, cached), L2-normalised; one LinearSVC per class, weights {+1: 2, -1: 1}, cost by
    3-fold cross-validated AP; difficult = negative in training, excluded at test; all-point AP."""
    from evaluate.voc07_svm import SVMConfig, run

    cfg = SVMConfig(layers=tuple(x.strip() for x in layers.split(",") if x.strip()), **kw)
    if costs:
        cfg.costs = tuple(float(c) for c in costs.split(","))
    s = run(cfg)
    import pandas as pd

    per_class = pd.DataFrame({layer: v["ap"] for layer, v in s["layers"].items()})  # classes x layers, %
    per_class.loc["mAP"] = pd.Series(s["mAP"])
    click.echo("VOC07 test AP % per class (rows) and layer (columns); blank = class skipped:")
    click.echo(per_class.to_string(float_format=lambda v: f"{v:5.1f}", na_rep=""))
    for layer, value in s["mAP"].items():
        click.echo(f"{layer}: VOC07 SVM mAP {value:.1f}%")
    click.echo(f"voc07-svm {s['method']}: records appended to {s['store']}"
               + (f" (deviations: {s['deviations']})" if s["deviations"] else ""))


@main.command("results")
@click.option("--store", type=click.Path(dir_okay=False), default=None,
              help="Records file (JSON lines) [$CPFS_BENCH_HOME/results/records.jsonl].")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "latex", "csv"]), default="table", show_default=True)
@click.option("--table", "tables", type=click.Choice(["1", "2", "all"]), default="all", show_default=True,
              help="The paper's Table 1 (VOC Cls./Det./Seg.) or Table 2 (ImageNet per-layer probes).")
@click.option("--method", "methods", multiple=True, help="Only our rows of these methods (repeatable).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Also write per-layer probe curves (PNG).")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write the tables to a file, not stdout.")
@fails_cleanly
def results_cmd(store, fmt, tables, methods, plot, output):
    """Aggregate the evaluation records into tables shaped like the paper's, its published rows beside
    ours; each of our cells names its protocol (legend under the table)."""
    from pathlib import Path

    from results.store import default_store, read_records
    from results.tables import render

    path = Path(store) if store else default_store()
    records = read_records(path) if path.exists() else []
    if methods:
        records = [r for r in records if r["method"] in methods]
    if not records:
        click.echo(f"no records of ours in {path} yet (run `bench eval ...`); showing the paper's numbers", err=True)
    text = "\n\n".join(render(records, int(t), fmt) for t in (("1", "2") if tables == "all" else (tables,)))
    if output:
        Path(output).write_text(text + "\n")
        click.echo(f"tables written to {output}", err=True)
    else:
        click.echo(text)
    if plot:
        from results.plots import plot_linear_probes

        plot_linear_probes(records, plot)
        click.echo(f"probe curves written to {plot}", err=True)


if __name__ == "__main__":
    main()
