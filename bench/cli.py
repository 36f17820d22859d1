"""The `bench` command. Thin: parse flags into a command's config dataclass and call one function.

Option defaults come from the dataclasses (the published protocols), never typed here. A value the
user typed (or that a --config file holds) is passed on as explicit, so no preset overrides it.
Exit codes: 0 done, 1 failed (the message names the cause and the file), 2 usage error,
130 interrupted (resumable state saved; the message says how to resume).
"""
from __future__ import annotations

import functools
from pathlib import Path

import click
from click.core import ParameterSource

from cpfs_bench.baselines.configs import TRUNK_ARCHS, RandomInitConfig, RandomRescaledConfig, SupervisedConfig
from cpfs_bench.bench.config import EMBEDDED_PRESET, dataclass_defaults
from cpfs_bench.bench.losses import LOSSES
from cpfs_bench.bench.registry import BY_COMMAND
from cpfs_bench.bench.reproduce import PRESETS as REPRODUCE_PRESETS
from cpfs_bench.bench.reproduce import ReproduceConfig
from cpfs_bench.bench.world.configs import ImageNetWorldConfig, VideoWorldConfig, VOCWorldConfig
from cpfs_bench.evaluate.configs import (
    ProbeConfig,
    ProposalsConfig,
    SVMConfig,
    VOCClsConfig,
    VOCDetConfig,
    VOCSegConfig,
)
from cpfs_bench.pretrain.configs import FLOW_METHODS, FlowConfig, PretrainConfig

# Only click and the torch-free config dataclasses are imported here: `bench --help` and `bench X --help`
# take well under a second; each command imports what it runs.

POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _preset_note(presets, field) -> str:
    notes = [f"{name} preset: {_shown(values[field])}" for name, values in presets.items() if field in values]
    return f" [{'; '.join(notes)}]" if notes else ""


def fails_cleanly(fn):
    """Turn the errors our code raises for bad input into one-line messages with exit code 1, and an
    interrupted run into exit code 130 with its resume command."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from cpfs_bench.bench.checkpoint import CheckpointError
        from cpfs_bench.bench.runs import RunInterrupted, TrainingDiverged

        try:
            return fn(*args, **kwargs)
        except RunInterrupted as e:
            click.echo(f"Interrupted: {e}", err=True)
            raise SystemExit(130) from None
        except (ValueError, OSError, CheckpointError, TrainingDiverged) as e:
            raise click.ClickException(str(e)) from e

    return wrapper


defaults_of = dataclass_defaults


def config_from_cli(cls, command: str, kw: dict, config_file=None):
    """(cls instance, names the user gave). Values: the dataclass defaults, then a --config file's,
    then what was typed on the command line."""
    from cpfs_bench.bench.config import load_config_file

    ctx = click.get_current_context()
    typed = {k for k in kw if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    from_file = load_config_file(config_file, cls, command) if config_file else {}
    values = {**{k: v for k, v in kw.items() if k not in typed}, **from_file, **{k: kw[k] for k in typed}}
    return cls(**values), typed | set(from_file)


def _check_eval_only(kw: dict, eval_only: bool, ckpt_role: str, config_file=None) -> None:
    """--eval-only needs --model and nothing else needs it; without --eval-only, --ckpt is required
    (or comes from the run's config.json given with --config)."""
    if eval_only != (kw["model"] is not None):
        raise click.UsageError("--eval-only and --model go together (re-scoring a model this command trained)")
    if not eval_only and kw["ckpt"] is None and not config_file:
        raise click.UsageError(f"Missing option '--ckpt' ({ckpt_role})")
    kw["ckpt"] = kw["ckpt"] or ""


def folder_or_rpn(ctx, param, value):
    """A click callback for voc07-det --proposals: "rpn", or an existing folder."""
    if value is None or value == "rpn":
        return value
    return click.Path(exists=True, file_okay=False).convert(value, param, ctx)


def comma_list(kind=str):
    """A click callback: "a,b,c" -> tuple, each item converted by `kind`; a bad item is a usage error."""

    def convert(ctx, param, value):
        if value is None or isinstance(value, tuple):
            return value
        items = [x.strip() for x in value.split(",") if x.strip()]
        try:
            return tuple(kind(x) for x in items)
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list of {kind.__name__}s, got {value!r}") from None

    return convert


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cpfs-bench", prog_name="cpfs-bench")
def main():
    """cpfs-bench: CPFS pretraining and self-supervised evaluation benchmarks."""


@main.group(short_help="Write the embedded default data (synthetic, real formats).")
def world():
    """Write the embedded default data (synthetic, in the real formats)."""


def _world_options(cls, **extra):
    d = defaults_of(cls)

    def wrap(fn):
        options = [click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write into."),
                   click.option("--seed", type=int, default=d["seed"], show_default=True)]
        options += [click.option(f"--{name.replace('_', '-')}", type=POSITIVE, default=d[name], show_default=True,
                                 help=text) for name, text in extra.items()]
        options.append(click.option("--workers", type=NON_NEGATIVE, default=d["workers"], show_default=True,
                                    help="Processes; 0 = every core."))
        for option in reversed(options):
            fn = option(fn)
        return fn

    return wrap


@world.command("videos", short_help="Clips of moving objects with exact flow.")
@_world_options(VideoWorldConfig, clips="Clips.", frames="Frames per clip.", height="Frame height.",
                width="Frame width.")
@fails_cleanly
def world_videos(**kw):
    """Short clips of textured objects moving (translation, rotation, scaling) over a moving textured
    background, with the exact forward flow of every frame pair (KITTI PNG, gt_flow/)."""
    from cpfs_bench.bench.world.videos import VideoWorldConfig, write_video_world

    out = write_video_world(VideoWorldConfig(**kw))
    click.echo(f"wrote {kw['clips']} clips x {kw['frames']} frames to {out}/videos, ground-truth flow in {out}/gt_flow")


@world.command("voc", short_help="VOC2007, VOC2012 and SBD in the devkit layouts.")
@_world_options(VOCWorldConfig, voc07_trainval="VOC2007 trainval images.", voc07_test="VOC2007 test images.",
                voc12_trainval="VOC2012 trainval images (SBD drawn from them).")
@fails_cleanly
def world_voc(**kw):
    """VOCdevkit/VOC2007 and VOC2012 (JPEGImages, Annotations, ImageSets, SegmentationClass/Object)
    and SBD (benchmark_RELEASE/dataset) in the real layouts, with procedurally drawn objects of the 20
    VOC classes; truncated/difficult flags and 255 borders follow the geometry."""
    from cpfs_bench.bench.world.voc import VOCWorldConfig, write_voc_world

    root = write_voc_world(VOCWorldConfig(**kw))
    click.echo(f"wrote VOC2007 ({kw['voc07_trainval']} trainval + {kw['voc07_test']} test), VOC2012 "
               f"({kw['voc12_trainval']} trainval) and SBD to {root}")


@world.command("imagenet", short_help="An ImageNet-style class-folder tree.")
@_world_options(ImageNetWorldConfig, classes="Classes.", train_per_class="Training images per class.",
                val_per_class="Validation images per class.", size="Image side in pixels.")
@fails_cleanly
def world_imagenet(**kw):
    """An ImageNet-style class-folder tree: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""
    from cpfs_bench.bench.world.imagenet import write_imagenet_world

    root = write_imagenet_world(ImageNetWorldConfig(**kw))
    click.echo(f"wrote {kw['classes']} classes x ({kw['train_per_class']} train + {kw['val_per_class']} val) "
               f"images to {root}")


@main.command("flow", short_help="Frames and optical flow (KITTI PNG) of videos.")
@click.argument("videos", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--method", type=click.Choice(FLOW_METHODS), default=defaults_of(FlowConfig)["method"], show_default=True)
@click.option("--resize", nargs=2, type=POSITIVE, default=None, metavar="H W", help="Resize frames first.")
@click.option("--stride", type=POSITIVE, default=defaults_of(FlowConfig)["stride"], show_default=True,
              help="Keep every k-th frame.")
@click.option("--workers", type=NON_NEGATIVE, default=defaults_of(FlowConfig)["workers"], show_default=True,
              help="Processes (one video each); 0 = every core.")
@click.option("--max-frames", type=POSITIVE, default=None, help="Stop each video after this many kept frames.")
@fails_cleanly
def flow_cmd(videos, out, method, resize, stride, workers, max_frames):
    """Compute optical flow of VIDEOS (video files, frame folders, or folders of either): frames as
    JPEG, flow as KITTI 16-bit PNG, plus a manifest.

    Resumable: finished videos are skipped, and a rerun with other settings (method, resize, stride,
    max frames) into the same folder is refused. Undecodable videos are listed in OUT/failures.txt and
    skipped (a truncated one keeps its decodable frames and is listed as partial); the command fails
    only if nothing could be processed."""
    from cpfs_bench.pretrain.extract import FlowConfig, extract_flow

    s = extract_flow(FlowConfig(list(videos), out, method, tuple(resize) if resize else None, stride, workers, max_frames))
    click.echo(f"flow: {s['processed']} videos processed, {s['skipped']} already done, {s['failed']} failed, "
               f"{s['partial']} partial; {s['pairs']} pairs in {s['seconds']:.1f}s -> {s['out']}")
    if s["failed"] or s["partial"]:
        click.echo(f"failures and partial videos listed in {s['out']}/failures.txt", err=True)
    if s["processed"] + s["skipped"] == 0:
        raise click.ClickException(f"no video could be processed (see {s['out']}/failures.txt)")


def _pretrain_options(fn):
    d = defaults_of(PretrainConfig)
    options = [
        click.option("--loss", type=click.Choice(LOSSES), default=d["loss"], show_default=True),
        click.option("--data", type=click.Path(), default=None,
                     help="A `bench flow` output folder. Default: the embedded video world (built on first use)."),
        click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder [runs/pretrain-<loss>]."),
        click.option("--arch", type=click.Choice(TRUNK_ARCHS), default=d["arch"], show_default=True),
        click.option("--iters", type=POSITIVE, default=d["iters"], show_default=True),
        click.option("--batch-size", type=POSITIVE, default=d["batch_size"], show_default=True),
        click.option("--pixels", type=POSITIVE, default=d["pixels"], show_default=True, help="Sampled pixels per image."),
        click.option("--hidden", type=POSITIVE, default=d["hidden"], show_default=True, help="Head MLP hidden width."),
        click.option("--embed-dim", type=POSITIVE, default=d["embed_dim"], show_default=True),
        click.option("--classes", type=POSITIVE, default=d["classes"], show_default=True,
                     help="direct-cls: flow codebook size (even)."),
        click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default=d["optimizer"], show_default=True),
        click.option("--lr", type=POSITIVE_FLOAT, default=d["lr"], show_default=True),
        click.option("--fc-lr-mult", type=POSITIVE_FLOAT, default=d["fc_lr_mult"], show_default=True,
                     help="lr multiplier on the trunk's fc6/fc7."),
        click.option("--momentum", type=float, default=d["momentum"], show_default=True, help="SGD only."),
        click.option("--weight-decay", type=float, default=d["weight_decay"], show_default=True),
        click.option("--schedule", type=click.Choice(["cosine", "step", "constant"]), default=d["schedule"],
                     show_default=True),
        click.option("--sigma", type=POSITIVE_FLOAT, default=d["sigma"], show_default=True,
                     help="Flow-kernel sigma (initial value with --learn-sigma)."),
        click.option("--learn-sigma/--fixed-sigma", default=d["learn_sigma"], show_default=True,
                     help="Learn sigma as the paper does (KTA can then collapse: README 'Choice of sigma')."),
        click.option("--squash/--no-squash", default=d["squash"], show_default=True,
                     help="Squash flow as sign(f) min(log(|f|+1)/log(51), 1)."),
        click.option("--seed", type=int, default=d["seed"], show_default=True),
        click.option("--device", default=d["device"], show_default=True, help="auto, cpu or cuda[:N]."),
        click.option("--amp/--no-amp", default=d["amp"], show_default=True, help="bf16 autocast on CUDA."),
        click.option("--workers", type=NON_NEGATIVE, default=None, help="Data-loading processes [0 on CPU, 8 on CUDA]."),
        click.option("--ckpt-every", type=POSITIVE, default=d["ckpt_every"], show_default=True,
                     help="Steps between resumable saves (also at the end and on Ctrl-C/SIGTERM)."),
        click.option("--save-minutes", type=POSITIVE_FLOAT, default=d["save_minutes"], show_default=True,
                     help="Also save the resumable state after this much wall time."),
        click.option("--snapshot-every", type=NON_NEGATIVE, default=d["snapshot_every"], show_default=True,
                     help="Keep weights-only step_*.pt every this many steps; 0 = never."),
        click.option("--log-every", type=POSITIVE, default=d["log_every"], show_default=True),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="A run's config.json: rerun with its settings (options typed here win)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command("pretrain", short_help="CPFS pretraining of a CaffeNet AlexNet.")
@_pretrain_options
@fails_cleanly
def pretrain_cmd(config_file, **kw):
    """CPFS pretraining of a CaffeNet AlexNet: KTA, CE, CE-rev, or the direct-cls baseline.

    Writes OUT/config.json, OUT/last.pt (resumable: every --ckpt-every steps, every --save-minutes,
    and on Ctrl-C/SIGTERM), OUT/final.pt (weights only, for the evaluations), OUT/log.jsonl and
    OUT/loss.png."""
    from cpfs_bench.pretrain.train import PretrainConfig, run

    cfg, _ = config_from_cli(PretrainConfig, "pretrain", kw, config_file)
    s = run(cfg)
    if s["first_loss"] is None:
        click.echo(f"pretrain {cfg.loss}: nothing to do, {s['checkpoint']} is at step {s['steps']}")
        return
    click.echo(f"pretrain {cfg.loss}: steps {s['start_step']}->{s['steps']}, loss {s['first_loss']:.4f} -> "
               f"{s['last_loss']:.4f} in {s['seconds']:.0f}s on {s['device']}; checkpoint {s['checkpoint']}")


@main.group(short_help="Baseline checkpoints: random init, random rescaled, supervised.")
def baseline():
    """Write baseline checkpoints in the project's format, accepted by every evaluation; their
    records carry the baseline's name as method."""


@baseline.command("random", short_help="A seeded random initialisation.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint file to write.")
@click.option("--arch", type=click.Choice(TRUNK_ARCHS), default=RandomInitConfig.arch, show_default=True)
@click.option("--seed", type=int, default=RandomInitConfig.seed, show_default=True)
@fails_cleanly
def baseline_random(out, arch, seed):
    """The project's initialisation of the trunk (Kaiming normal, zero biases), seeded: the same seed
    writes the same weights."""
    from cpfs_bench.baselines.random_init import write_random_checkpoint

    path = write_random_checkpoint(out, arch, seed)
    click.echo(f"baseline random ({arch}, seed {seed}): checkpoint {path}")


@baseline.command("random-rescaled", short_help="Krähenbühl et al.'s rescaled random init (magic_init).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint file to write.")
@click.option("--arch", type=click.Choice(TRUNK_ARCHS), default=RandomRescaledConfig.arch, show_default=True)
@click.option("--seed", type=int, default=RandomRescaledConfig.seed, show_default=True,
              help="Gaussian weights and the image draw.")
@click.option("--images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of images (searched recursively). Default: the embedded ImageNet world's train split.")
@click.option("--batches", type=POSITIVE, default=RandomRescaledConfig.batches, show_default=True,
              help="Batches of images (magic_init -nit).")
@click.option("--batch-size", type=POSITIVE, default=RandomRescaledConfig.batch_size, show_default=True,
              help="Images per batch (magic_init -bs).")
@click.option("--bias", type=float, default=RandomRescaledConfig.bias, show_default=True,
              help="Each channel's mean before the ReLU: bias = -mu/sigma + this (magic_init -b).")
@click.option("--equalize-gradients", is_flag=True,
              help="Then equalise the gradient / weight ratios between layers (magic_init -cs).")
@fails_cleanly
def baseline_random_rescaled(**kw):
    """Gaussian weights, then layer by layer (conv1 .. fc7) each channel's output before the ReLU rescaled on
    real images to mean `--bias` and standard deviation 1 (Krähenbühl et al. 2016, philkr/magic_init "elwise")."""
    from cpfs_bench.baselines.random_rescaled import write_random_rescaled_checkpoint

    s = write_random_rescaled_checkpoint(RandomRescaledConfig(**kw))
    sigmas = ", ".join(f"{k} {v['sigma']:.3g}" for k, v in s["layers"].items())
    click.echo(f"baseline random-rescaled ({kw['arch']}, seed {kw['seed']}): {s['images']} images, "
               f"{s['seconds']:.0f}s; sigma before rescaling: {sigmas}")
    if s["equalization"] is not None:
        click.echo(f"gradient ratios equalised in {len(s['equalization'])} rounds")
    click.echo(f"checkpoint {s['checkpoint']}")


def _supervised_option(name, **kw):
    d = defaults_of(SupervisedConfig)
    note = _preset_note(SupervisedConfig.PRESETS, name.replace("-", "_"))
    return click.option(f"--{name}", default=d[name.replace("-", "_")], show_default=True,
                        help=kw.pop("help", "") + note, **kw)


@baseline.command("supervised", short_help="Supervised training on an ImageNet-style folder.")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="ImageNet-layout root (train/<wnid>/, val/<wnid>/). Default: the embedded world, --preset smoke.")
@click.option("--out", type=click.Path(file_okay=False), default=defaults_of(SupervisedConfig)["out"],
              show_default=True, help="Run folder; the checkpoint to evaluate is OUT/final.pt.")
@click.option("--arch", type=click.Choice(TRUNK_ARCHS), default=defaults_of(SupervisedConfig)["arch"],
              show_default=True)
@_supervised_option("epochs", type=POSITIVE)
@_supervised_option("batch-size", type=POSITIVE)
@_supervised_option("lr", type=POSITIVE_FLOAT)
@_supervised_option("lr-step", type=POSITIVE, help="Epochs between lr drops (x0.1).")
@_supervised_option("min-crop-scale", type=click.FloatRange(0.01, 1.0),
                    help="Smallest area fraction of the random-resized training crops.")
@click.option("--preset", type=click.Choice(sorted(SupervisedConfig.PRESETS)), default=None,
              help="smoke: a short run for the embedded world (its default); options you type win; recorded.")
@click.option("--seed", type=int, default=defaults_of(SupervisedConfig)["seed"], show_default=True)
@click.option("--device", default=defaults_of(SupervisedConfig)["device"], show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--workers", type=NON_NEGATIVE, default=None, help="Data-loading processes [0 on CPU, 8 on CUDA].")
@click.option("--resume", is_flag=True, help="Continue the run in --out.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A run's config.json: rerun with its settings (options typed here win).")
@fails_cleanly
def baseline_supervised(config_file, **kw):
    """Train the trunk with a new fc8 classifier on labelled images, torchvision references style:
    SGD lr 0.01, momentum 0.9, wd 1e-4, batch 256, 90 epochs, x0.1 every 30; random-resized 227 crops
    and flips; resize 256 + centre crop 227 for validation."""
    from cpfs_bench.baselines.supervised import run

    cfg, explicit = config_from_cli(SupervisedConfig, "baseline supervised", kw, config_file)
    s = run(cfg, explicit=explicit)
    click.echo(f"baseline supervised: val top-1 {s['val_top1']:.1f}% after {s['epochs']} epochs in "
               f"{s['seconds']:.0f}s; checkpoint {s['checkpoint']}"
               + (f" (deviations: {s['deviations']})" if s["deviations"] else ""))


@main.group("eval", short_help="Evaluate a checkpoint on a transfer benchmark.")
def eval_group():
    """Evaluate a checkpoint on a transfer benchmark; every number is appended to the results store."""


CKPT_HELP = "cpfs-bench checkpoint (final.pt of a run), or a plain CaffeNet or torchvision AlexNet state_dict."


def _preset_help(cls) -> str:
    described = "; ".join(f"{name}: " + ", ".join(f"{k.replace('_', '-')} {_shown(v)}" for k, v in values.items())
                          for name, values in cls.PRESETS.items())
    embedded = getattr(cls, "EMBEDDED_PRESET", EMBEDDED_PRESET)
    kind = ("a pipeline check, not a measurement" if embedded == "smoke"
            else "calibrated there so that trunks separate; never comparable with the paper's numbers")
    default = (f"{embedded.capitalize()} is the embedded world's default ({kind})" if embedded
               else "The embedded world runs the protocol")
    return f"{described}. {default}; options you type win; recorded as deviations."


def evaluation_options(cls, command: str, *, model_role: str | None = None, folder: bool = True,
                       workers_help: str = "Data-loading processes [0 on CPU, 8 on CUDA]."):
    """The options every `bench eval` command shares, declared once, defaults read from the config dataclass
    `cls`: first --ckpt (with --eval-only and --model where the task re-scores a model it trained:
    model_role names it), then, after the task's own options, --preset, --seed, --device, --workers, --out,
    --resume, --config (tasks with a run folder), --store, --method, --name."""
    d = defaults_of(cls)
    head = [click.option("--ckpt", type=click.Path(exists=True, dir_okay=False), default=None,
                         required=model_role is None,
                         help=CKPT_HELP + (" Required unless --eval-only." if model_role else ""))]
    if model_role:
        head += [click.option("--eval-only", is_flag=True, help=f"Only test: re-score the {model_role} given by --model."),
                 click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
                              help=f"With --eval-only: a {command} run's final.pt.")]
    tail = [click.option("--preset", type=click.Choice(sorted(cls.PRESETS)), default=None,
                         help=_preset_help(cls)),
            click.option("--seed", type=int, default=d.get("seed"), show_default=True) if "seed" in d else None,
            click.option("--device", default=d["device"], show_default=True, help="auto, cpu or cuda[:N]."),
            click.option("--workers", type=NON_NEGATIVE, default=d["workers"], show_default=d["workers"] is not None,
                         help=workers_help)]
    tail = [option for option in tail if option is not None]  # (the SVMs draw nothing at random: no --seed)
    if "init" in d:  # the fine-tuning evaluations (evaluate/initialization.py)
        tail += [click.option("--init", type=click.Choice(cls.INITS), default=d["init"], show_default=True,
                              help="The loaded trunk before fine-tuning: as-is (the protocol); rescale = magic_init "
                                   "-cs, one scale per layer equalising gradient/weight ratios (BatchNorm folded "
                                   "first; needs --bn-mode eval on BN trunks); reinit-fc = fc6/fc7 drawn again, "
                                   "data-dependent (magic_init elwise); reinit-fc-rescale = both. Recorded."),
                 click.option("--init-images", type=POSITIVE, default=d["init_images"], show_default=True,
                              help="Training images --init measures (magic_init: 10 batches of 16).")]
    if "bn_mode" in d:
        tail.append(click.option("--bn-mode", type=click.Choice(["eval", "train"]), default=d["bn_mode"],
                                 show_default=True, help="BatchNorm trunks: eval = running statistics, train = "
                                                         "batch statistics."))
    if folder:
        tail += [click.option("--out", type=click.Path(file_okay=False), default=None,
                              help=f"Run folder [runs/{command}-<run>-<checkpoint sha>]."),
                 click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")]
    tail += [click.option("--store", type=click.Path(dir_okay=False), default=None, help="Results records file."),
             click.option("--method", default=None, help="Method name in the tables [from the checkpoint]."),
             click.option("--name", default=None, help="Run name, a table row of its own [the checkpoint's run folder].")]
    if folder:
        tail.append(click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
                                 help=f"A {command} run's config.json: rerun with its settings (options typed here win)."))

    def wrap(fn):
        # placed right under the command's decorator, so the task's options are already on fn (decorators
        # apply bottom-up; click lists them reversed): the tail goes after them, the head before
        task_params = getattr(fn, "__click_params__", [])
        fn.__click_params__ = []
        for option in reversed(tail):
            fn = option(fn)
        fn.__click_params__ = fn.__click_params__ + task_params
        for option in reversed(head):
            fn = option(fn)
        return fn

    return wrap


def _finish_eval(command: str, s: dict) -> None:
    click.echo(f"{command} {s['method']} (run {s['run']}): records appended to {s['store']}"
               + (f" (deviations: {s['deviations']})" if s["deviations"] else ""))


@eval_group.command("linear-probe", short_help=BY_COMMAND["linear-probe"].summary)
@evaluation_options(ProbeConfig, "linear-probe")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="ImageNet root (train/<wnid>/, val/<wnid>/). Default: the embedded world, with --preset smoke.")
@click.option("--layers", default=",".join(defaults_of(ProbeConfig)["layers"]), show_default=True,
              callback=comma_list())
@click.option("--pooling", type=click.Choice(ProbeConfig.POOLINGS), default=defaults_of(ProbeConfig)["pooling"],
              show_default=True, help="avg = FAIR/VISSL pooling; bilinear = Zhang et al.'s resize.")
@click.option("--epochs", type=POSITIVE, default=defaults_of(ProbeConfig)["epochs"], show_default=True,
              help="The lr drops (8/16/24 of 28) scale with it." + _preset_note(ProbeConfig.PRESETS, "epochs"))
@click.option("--lr", type=POSITIVE_FLOAT, default=defaults_of(ProbeConfig)["lr"], show_default=True)
@click.option("--batch-size", type=POSITIVE, default=defaults_of(ProbeConfig)["batch_size"], show_default=True,
              help="Images per step." + _preset_note(ProbeConfig.PRESETS, "batch_size"))
@fails_cleanly
def eval_linear_probe(config_file, **kw):
    """ImageNet per-layer linear probes on the frozen trunk (paper Table 2), all layers in one pass:
    avg-pooled conv1..conv5 (~9k dims) -> BatchNorm (no affine) -> linear; SGD 0.01, momentum 0.9,
    wd 5e-4, batch 256, 28 epochs, lr x0.1 at 8/16/24; top-1/top-5 on val."""
    from cpfs_bench.evaluate.linear_probe import run
    from cpfs_bench.results.plots import plot_linear_probes

    cfg, explicit = config_from_cli(ProbeConfig, "eval linear-probe", kw, config_file)
    s = run(cfg, explicit=explicit)
    # this run's top-1 per layer beside the paper's Table 2 curves
    figure = plot_linear_probes([r for r in s["records"] if r["metric"] == "top1"], Path(s["out"]) / "layers.png")
    for layer, sc in s["scores"].items():
        click.echo(f"{layer}: top-1 {sc['top1']:.1f}%  top-5 {sc['top5']:.1f}%  ({s['dims'][layer]} dims)")
    _finish_eval("linear-probe", s)
    click.echo(f"per-layer plot: {figure}; training log: {s['log']}")


@eval_group.command("voc07-svm", short_help=BY_COMMAND["voc07-svm"].summary)
@evaluation_options(SVMConfig, "voc07-svm", folder=False, workers_help="SVM processes; 0 = every core.")
@click.option("--voc", type=click.Path(file_okay=False), default=None,
              help="VOCdevkit root (or its parent). Default: the embedded world.")
@click.option("--layers", default=",".join(defaults_of(SVMConfig)["layers"]), show_default=True,
              callback=comma_list())
@click.option("--pooling", type=click.Choice(ProbeConfig.POOLINGS), default=defaults_of(SVMConfig)["pooling"],
              show_default=True)
@click.option("--costs", default=None, callback=comma_list(float),
              help=f"Comma-separated C sweep [Goyal et al.'s {len(defaults_of(SVMConfig)['costs'])} costs"
                   + _preset_note(SVMConfig.PRESETS, "costs").replace(" [", "; ").rstrip("]") + "].")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Feature cache [$CPFS_BENCH_HOME/cache/features].")
@fails_cleanly
def eval_voc07_svm(**kw):
    """VOC07 per-layer linear SVMs (Goyal et al. 2019): pooled conv1..conv5 features of trainval/test
    (extracted once, cached), L2-normalised; one LinearSVC per class, weights {+1: 2, -1: 1}, cost by
    3-fold cross-validated AP; difficult = negative in training, excluded at test; all-point AP."""
    from cpfs_bench.evaluate.voc07_svm import run

    if kw["costs"] is None:
        kw.pop("costs")
    cfg, explicit = config_from_cli(SVMConfig, "eval voc07-svm", kw)
    s = run(cfg, explicit=explicit)
    import pandas as pd

    per_class = pd.DataFrame({layer: v["ap"] for layer, v in s["layers"].items()})  # classes x layers, %
    per_class.loc["mAP"] = pd.Series(s["mAP"])
    click.echo("VOC07 test AP % per class (rows) and layer (columns); blank = class skipped:")
    click.echo(per_class.to_string(float_format=lambda v: f"{v:5.1f}", na_rep=""))
    for layer, value in s["mAP"].items():
        click.echo(f"{layer}: VOC07 SVM mAP {value:.1f}%")
    _finish_eval("voc07-svm", s)


@eval_group.command("voc07-cls", short_help=BY_COMMAND["voc07-cls"].summary)
@evaluation_options(VOCClsConfig, "voc07-cls", model_role="fine-tuned model")
@click.option("--voc", type=click.Path(file_okay=False), default=None,
              help="VOCdevkit root (or its parent) holding VOC2007. Default: the embedded world, with --preset "
                   f"{VOCClsConfig.EMBEDDED_PRESET}.")
@click.option("--train-from", type=click.Choice(VOCClsConfig.TRAIN_FROM), default=defaults_of(VOCClsConfig)["train_from"],
              show_default=True, help="conv1: fine-tune every layer (the reported mode); fc6: fc6 on; fc8: fc8 only.")
@click.option("--iters", type=POSITIVE, default=defaults_of(VOCClsConfig)["iters"], show_default=True,
              help="SGD iterations; the lr step scales with it." + _preset_note(VOCClsConfig.PRESETS, "iters"))
@click.option("--lr", type=POSITIVE_FLOAT, default=defaults_of(VOCClsConfig)["lr"], show_default=True,
              help="Base lr (biases x2).")
@click.option("--lr-step", type=POSITIVE, default=defaults_of(VOCClsConfig)["lr_step"], show_default=True,
              help=f"Iterations between lr x0.5 [scaled by --iters / {VOCClsConfig.iters} unless typed].")
@click.option("--batch-size", type=POSITIVE, default=defaults_of(VOCClsConfig)["batch_size"], show_default=True)
@click.option("--test-crops", type=POSITIVE, default=defaults_of(VOCClsConfig)["test_crops"], show_default=True,
              help="Test views per image, drawn by the training augmentation, scores summed."
                   + _preset_note(VOCClsConfig.PRESETS, "test_crops"))
@fails_cleanly
def eval_voc07_cls(config_file, eval_only, **kw):
    """VOC2007 classification by fine-tuning (Krähenbühl et al.; paper Table 1 "Cls."): new fc8 after
    drop7, SGD lr 0.001 (biases x2), momentum 0.9, batch 16, 80k iterations, lr x0.5 every 10k, weight
    decay 1e-6, gradient norm clipped to 10; scale [0.5, 2] + random 227 crop + mirror; sigmoid
    cross-entropy without the difficult labels. Test: 10 augmented crops summed; mAP as the
    reference code computes it (and the devkit's 11-point)."""
    from cpfs_bench.evaluate.voc07_cls import run

    _check_eval_only(kw, eval_only, "the checkpoint to fine-tune", config_file)
    cfg, explicit = config_from_cli(VOCClsConfig, "eval voc07-cls", kw, config_file)
    s = run(cfg, explicit=explicit)
    click.echo(f"VOC07 classification mAP {s['mAP']['reference']:.1f}% (reference AP, {s['test_crops']} crops); "
               f"devkit 11-point {s['mAP']['voc07']:.1f}%; 1 crop {s['mAP']['reference_1crop']:.1f}%")
    _finish_eval("voc07-cls", s)
    click.echo(f"fine-tuned model: {s['model']}; test scores: {s['scores']}")


@eval_group.command("voc12-seg", short_help=BY_COMMAND["voc12-seg"].summary)
@evaluation_options(VOCSegConfig, "voc12-seg", model_role="trained FCN")
@click.option("--sbd", type=click.Path(file_okay=False), default=None,
              help="SBD (benchmark_RELEASE or its dataset/ folder), the training set. Default: the embedded world.")
@click.option("--voc", type=click.Path(file_okay=False), default=None,
              help="VOCdevkit (or its parent) with VOC2012 or VOC2011 and the seg11valid list. Default: the "
                   f"embedded world (then --preset {VOCSegConfig.EMBEDDED_PRESET}).")
@click.option("--iters", type=POSITIVE, default=defaults_of(VOCSegConfig)["iters"], show_default=True,
              help="Weight updates of --iter-size images each." + _preset_note(VOCSegConfig.PRESETS, "iters"))
@click.option("--iter-size", type=POSITIVE, default=defaults_of(VOCSegConfig)["iter_size"], show_default=True,
              help="Images per update (batch 1, gradients accumulated).")
@click.option("--lr", type=POSITIVE_FLOAT, default=defaults_of(VOCSegConfig)["lr"], show_default=True)
@click.option("--loss-normalization", type=click.Choice(["pixels", "none"]),
              default=defaults_of(VOCSegConfig)["loss_normalization"], show_default=True,
              help="pixels: the loss divided by the labelled pixels (the reference solver's lr 1e-4 is 'for "
                   "normalized softmax'); none: summed, as the reference net.py (diverges at lr 1e-4). Recorded.")
@click.option("--test-split", default=defaults_of(VOCSegConfig)["test_split"], show_default=True,
              help="VOC ImageSets/Segmentation list to test on.")
@click.option("--save-predictions", type=NON_NEGATIVE, default=defaults_of(VOCSegConfig)["save_predictions"],
              show_default=True, help="Write this many test predictions (palette PNG + image | truth | prediction picture).")
@fails_cleanly
def eval_voc12_seg(config_file, eval_only, **kw):
    """VOC2012 segmentation with FCN-32s on the trunk (FCN authors' voc-fcn-alexnet; paper Table 1
    "Seg."): conv1 padded by 100, fc6/fc7 as convolutions with the trunk's weights, 21-way score layer,
    fixed bilinear x32 upsampling, crop; SBD train, whole images, batch 1 x 20 accumulated, SGD lr 1e-4
    fixed, momentum 0.9, weight decay 5e-4, 100k updates, softmax loss per labelled pixel (the reference's
    net.py sums it, its solver's lr is for the normalised one; recorded); mIoU on seg11valid."""
    from cpfs_bench.evaluate.voc12_seg import run

    _check_eval_only(kw, eval_only, "the checkpoint to train FCN-32s from", config_file)
    cfg, explicit = config_from_cli(VOCSegConfig, "eval voc12-seg", kw, config_file)
    s = run(cfg, explicit=explicit)
    click.echo(f"VOC12 segmentation mIoU {s['mIoU']:.1f}%, pixel accuracy {s['pixel_accuracy']:.1f}% "
               f"({s['iters']} updates); objects found (foreground IoU) {s['foreground_IoU']:.1f}%, "
               f"named right {s['foreground_class_accuracy']:.1f}% of them")
    _finish_eval("voc12-seg", s)
    click.echo(f"model: {s['model']}" + (f"; predictions: {s['predictions']}" if s["predictions"] else ""))


@eval_group.command("voc07-det", short_help=BY_COMMAND["voc07-det"].summary)
@evaluation_options(VOCDetConfig, "voc07-det", model_role="trained detector",
                    workers_help="Data-loading processes [0 on CPU, 8 on CUDA]; selective-search processes [every core].")
@click.option("--voc", type=click.Path(file_okay=False), default=None,
              help="VOCdevkit (or its parent) with VOC2007. Default: the embedded world (then --preset "
                   f"{VOCDetConfig.EMBEDDED_PRESET}).")
@click.option("--proposals", callback=folder_or_rpn, default=None,
              help="Folder with voc_2007_trainval.mat and voc_2007_test.mat in Fast R-CNN's format (e.g. its "
                   "published selective-search files), or `rpn`: Faster R-CNN, a region proposal network trained "
                   "with the detector (a recorded deviation). Default: `bench proposals` (selective search, cached).")
@click.option("--iters", type=POSITIVE, default=defaults_of(VOCDetConfig)["iters"], show_default=True,
              help="Iterations of 2 images; the lr step scales with it." + _preset_note(VOCDetConfig.PRESETS, "iters"))
@click.option("--lr", type=POSITIVE_FLOAT, default=defaults_of(VOCDetConfig)["lr"], show_default=True)
@click.option("--lr-step", type=POSITIVE, default=defaults_of(VOCDetConfig)["lr_step"], show_default=True,
              help="Iterations between lr /10 [scaled with --iters unless typed].")
@click.option("--train-scales", callback=comma_list(int),
              default=",".join(map(str, defaults_of(VOCDetConfig)["train_scales"])), show_default=True,
              help="Shorter sides to train at, one drawn per image."
                   + _preset_note(VOCDetConfig.PRESETS, "train_scales"))
@click.option("--test-scale", type=POSITIVE, default=defaults_of(VOCDetConfig)["test_scale"], show_default=True,
              help="Shorter side at test." + _preset_note(VOCDetConfig.PRESETS, "test_scale"))
@click.option("--train-from", type=click.Choice(VOCDetConfig.TRAIN_FROM), default=defaults_of(VOCDetConfig)["train_from"],
              show_default=True, help="conv2: conv1 fixed, as Fast R-CNN fine-tunes CaffeNet; conv1: every layer.")
@click.option("--roi-mapping", type=click.Choice(VOCDetConfig.ROI_MAPPINGS),
              default=defaults_of(VOCDetConfig)["roi_mapping"], show_default=True,
              help="Box to conv5 cells: centres = round((x - 17) / 16), the cells whose receptive fields are centred "
                   "in the box; fast-rcnn = round(x / 16), the reference's (about one cell off). Recorded.")
@click.option("--train-images", type=POSITIVE, default=None,
              help="Only the first N trainval images [all]." + _preset_note(VOCDetConfig.PRESETS, "train_images"))
@click.option("--test-images", type=POSITIVE, default=None,
              help="Only the first N test images [all]." + _preset_note(VOCDetConfig.PRESETS, "test_images"))
@click.option("--save-predictions", type=NON_NEGATIVE, default=defaults_of(VOCDetConfig)["save_predictions"],
              show_default=True, help="Draw the detections of this many test images (PNG).")
@fails_cleanly
def eval_voc07_det(config_file, eval_only, **kw):
    """VOC2007 detection with Fast R-CNN on the trunk (rbgirshick/fast-rcnn; paper Table 1 "Detection"):
    RoI max pooling 6x6 on conv5, the trunk's fc6/fc7, new 21-way classifier and box regressor; selective-search
    proposals; trainval + mirrors, 2 images x 64 RoIs (25% foreground), shorter side from {480, ..., 1200};
    SGD lr 0.001, /10 every 50k, 150k iterations; test at 600, NMS 0.3; VOC07 11-point AP from the devkit's
    comp4 files written to the run folder."""
    from cpfs_bench.evaluate.voc07_det import run

    _check_eval_only(kw, eval_only, "the checkpoint to train Fast R-CNN from", config_file)
    cfg, explicit = config_from_cli(VOCDetConfig, "eval voc07-det", kw, config_file)
    s = run(cfg, explicit=explicit)
    timing = f", {s['seconds_per_iter']:.2f} s per iteration" if s["seconds_per_iter"] else ""
    click.echo(f"VOC07 detection mAP {s['mAP']:.1f}% (11-point, {s['iters']} iterations{timing})")
    _finish_eval("voc07-det", s)
    if s["counts"]:
        click.echo("training images: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in s["counts"].items()))
    click.echo(f"model: {s['model']}; devkit result files: {s['comp4']}")


@main.command("reproduce", short_help="Every table of the paper from one command (resumable).")
@click.option("--preset", type=click.Choice(REPRODUCE_PRESETS), default=ReproduceConfig.preset, show_default=True,
              help="smoke: tiny worlds, toy scale (a pipeline check, minutes); default: the embedded worlds at the "
                   "commands' own defaults there (the ladder scale, hours on 2 cores); paper: the published "
                   "protocols on real data (--voc, --sbd, --imagenet, --videos).")
@click.option("--out", type=click.Path(file_okay=False), default=ReproduceConfig.out, show_default=True,
              help="Folder for everything; rerun with the same settings to continue an interrupted reproduce.")
@click.option("--jobs", type=POSITIVE, default=ReproduceConfig.jobs, show_default=True, help="Steps run at once.")
@click.option("--voc", type=click.Path(exists=True, file_okay=False), default=None,
              help="paper: VOCdevkit (or its parent) with VOC2007 and VOC2012.")
@click.option("--sbd", type=click.Path(exists=True, file_okay=False), default=None,
              help="paper: SBD (benchmark_RELEASE, or its dataset/ folder).")
@click.option("--imagenet", type=click.Path(exists=True, file_okay=False), default=None,
              help="paper: ImageNet root with train/ and val/ class folders.")
@click.option("--videos", type=click.Path(exists=True), multiple=True,
              help="paper: videos or frame folders to pretrain on (repeatable).")
@click.option("--seed", type=int, default=ReproduceConfig.seed, show_default=True)
@click.option("--methods", callback=comma_list(str), default=",".join(ReproduceConfig.methods), show_default=True,
              help="The rows to make (comma-separated): a part of the plan, e.g. one method; more can be added later "
                   "into the same --out.")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@fails_cleanly
def reproduce_cmd(dry_run, **kw):
    """Pretrain CPFS-KTA, CE, CE-rev and direct cls, build the random, random-rescaled and supervised baselines, run
    every evaluation on each, draw Fig. 1 per loss, and write Tables 1, 2 and the SVM table (terminal, Markdown,
    LaTeX, CSV) beside the paper's, the probe plot and OUT/README.md. Each step is a `bench` command (log in
    OUT/logs/); finished steps are skipped on a rerun, interrupted ones resume."""
    from cpfs_bench.bench.reproduce import check_config, describe_plan, finished_steps, plan, run

    cfg = ReproduceConfig(**{**kw, "videos": tuple(kw["videos"]), "methods": tuple(kw["methods"])})
    if dry_run:
        check_config(cfg)
        steps = plan(cfg)
        done, stale = finished_steps(Path(cfg.out), steps)
        click.echo(describe_plan(steps, done, cfg.jobs, stale))
        return
    s = run(cfg)
    click.echo(Path(s["tables"]["table"]).read_text())
    ran = sum(v == "done" for v in s["outcome"].status.values())
    click.echo(f"reproduce ({cfg.preset}): {ran} steps run, {len(s['steps']) - ran} already done; {s['readme']}")


def _pixel_list(ctx, param, value):
    """--pixels "x,y;x,y" -> [(x, y)]; a bad item is a usage error."""
    if value is None:
        return None
    try:
        pixels = [tuple(int(v) for v in item.split(",")) for item in value.split(";") if item.strip()]
    except ValueError:
        pixels = []
    if not pixels or any(len(p) != 2 for p in pixels):
        raise click.BadParameter(f"expected 'x,y;x,y' pixel positions in the crop, got {value!r}")
    return pixels


@main.command("viz", short_help="Draw what a CPFS checkpoint learned (the paper's Fig. 1).")
@click.option("--ckpt", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A `bench pretrain` checkpoint (final.pt), any loss.")
@click.option("--frame", type=click.Path(exists=True, dir_okay=False), default=None, help="A video frame (image).")
@click.option("--flow", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The frame's flow as a KITTI 16-bit PNG (`bench flow` output); adds K_f beside K_phi.")
@click.option("--video", type=click.Path(exists=True), default=None,
              help="Instead of --frame: a video file or frame folder; draws a strip over --frames frames.")
@click.option("--frames", type=POSITIVE, default=4, show_default=True, help="Frames in the --video strip.")
@click.option("--pixels", callback=_pixel_list, default=None,
              help="Pixels p to draw K(p, .) for, 'x,y;x,y' in the centre crop [fastest, slowest and a middle one].")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="PNG to write [<frame>-<loss>-viz.png].")
@fails_cleanly
def viz(ckpt, frame, flow, video, frames, pixels, out):
    """The frame, its flow (colour wheel and key), the per-pixel embedding projected to RGB by PCA, and kernel rows
    K_phi(p, .) and K_f(p, .) for a few pixels; with --video, frame / flow / embedding over several frames."""
    from cpfs_bench.pretrain.viz import embedding_figure, video_strip

    if (frame is None) == (video is None):
        raise click.UsageError("give either --frame (and optionally --flow) or --video")
    if video is not None and (flow or pixels):
        raise click.UsageError("--flow and --pixels go with --frame; --video computes its own flow")
    path = video_strip(ckpt, video, out, frames) if video else embedding_figure(ckpt, frame, flow, out, pixels)
    click.echo(f"viz: {path}")


@main.group("import", short_help="Published models into the checkpoint format: caffe, torchvision.")
def import_group():
    """Convert published AlexNets into the project's checkpoint format, with their input convention, so every
    evaluation runs on them (the paper's reference rows)."""


@import_group.command("torchvision", short_help="torchvision's alexnet() state dict (a local file).")
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A state dict of torchvision.models.alexnet() (e.g. torch.save(model.state_dict(), path)).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint file to write.")
@fails_cleanly
def import_torchvision_command(weights, out):
    """torchvision's AlexNet (64-192-384-256-256) as the "alexnet" trunk, its classifier.6 as the head; input RGB
    normalised by the ImageNet mean and std."""
    from cpfs_bench.baselines.torchvision_weights import import_torchvision

    click.echo(f"imported torchvision alexnet: checkpoint {import_torchvision(weights, out)}")


@import_group.command("caffe", short_help="A Caffe CaffeNet (.prototxt + .caffemodel), without Caffe.")
@click.option("--prototxt", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The net's text definition (deploy or train_val): layer order, groups, strides, pads, LRN, input.")
@click.option("--caffemodel", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The binary weights (NetParameter; `layer` or legacy V1 `layers`).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint file to write.")
@click.option("--mean-values", callback=comma_list(float), default=None,
              help="Mean pixel B,G,R (0-255, the model's channel order; one value for all three) [the prototxt's "
                   "transform_param, else BVLC's ILSVRC12 mean, recorded as assumed].")
@click.option("--mean-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A mean image (.binaryproto), averaged per channel [the prototxt's transform_param mean_file].")
@click.option("--scale", type=POSITIVE_FLOAT, default=None, help="Caffe's transform_param scale [the prototxt's, else 1].")
@click.option("--channel-order", type=click.Choice(["BGR", "RGB"]), default=None,
              help="The model's input channel order [BGR, as every Caffe model trained from Caffe's data layers].")
@fails_cleanly
def import_caffe_command(prototxt, caffemodel, out, mean_values, mean_file, scale, channel_order):
    """A CaffeNet-style AlexNet (bvlc_reference_caffenet's layout: conv-relu-pool-norm, grouped conv2/4/5, fc6,
    fc7; fc8 and later ignored) as a "caffenet" checkpoint. Weights are read with the protobuf library from a
    caffe.proto subset shipped here; anything else is refused, naming the first layer that does not fit. The
    input convention (BGR, 0-255, mean, scale) is recorded, and conv1's channels flipped so every evaluation
    feeds RGB with the matching mean and std."""
    from cpfs_bench.baselines.caffe_import import import_caffe
    from cpfs_bench.bench.checkpoint import load_checkpoint

    path = import_caffe(prototxt, caffemodel, out, mean_values=mean_values, mean_file=mean_file, scale=scale,
                        channel_order=channel_order)
    convention = load_checkpoint(path)["extra"]["input_convention"]
    click.echo(f"imported {prototxt} + {caffemodel}: input {convention['channel_order']} 0-255 minus "
               f"{[round(v, 3) for v in convention['mean_values_bgr']]} (BGR; {convention['mean_source']}), "
               f"x {convention['scale']:g}")
    click.echo(f"checkpoint {path}")


@main.group("export", short_help="Checkpoints out to other formats: torchvision.")
def export_group():
    """Write the project's checkpoints in formats other tools load."""


@export_group.command("torchvision", short_help="An alexnet-trunk checkpoint as torchvision's state dict.")
@click.option("--ckpt", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A cpfs-bench checkpoint of an alexnet trunk (e.g. from `bench import torchvision`).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="State dict file to write (.pth).")
@fails_cleanly
def export_torchvision_command(ckpt, out):
    """For trunks of torchvision's shapes ("alexnet"): torchvision.models.alexnet(num_classes=N).load_state_dict
    takes the file (classifier.6 from the checkpoint's head, when it has one). CaffeNet trunks do not fit and are
    refused, naming the first layer that differs."""
    from cpfs_bench.baselines.torchvision_weights import export_torchvision

    path, with_classifier = export_torchvision(ckpt, out)
    click.echo(f"exported {path}" + ("" if with_classifier else " without classifier.6 (the checkpoint has no "
                                                                   "4096-input head): load it with strict=False"))


@main.command("proposals", short_help="Selective-search proposals (Fast R-CNN's .mat format).")
@click.option("--voc", type=click.Path(file_okay=False), default=None,
              help="VOCdevkit (or its parent). Default: the embedded world.")
@click.option("--year", default=ProposalsConfig.year, show_default=True)
@click.option("--split", "splits", callback=comma_list(), default=",".join(ProposalsConfig.splits), show_default=True,
              help="Comma-separated ImageSets/Main lists.")
@click.option("--mode", type=click.Choice(ProposalsConfig.MODES), default=ProposalsConfig.mode, show_default=True,
              help="Selective-search strategy (Fast R-CNN used fast).")
@click.option("--workers", type=NON_NEGATIVE, default=None, help="Processes [every core].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Also copy voc_<year>_<split>.mat here [only the cache, $CPFS_BENCH_HOME/proposals].")
@fails_cleanly
def proposals_cmd(voc, year, splits, mode, workers, out):
    """Selective-search object proposals (OpenCV contrib) for VOC splits, one voc_<year>_<split>.mat
    each in Fast R-CNN's public format (1 x N cells of 1-based (y1, x1, y2, x2) boxes, and the image ids),
    so Fast R-CNN's published files can stand in for them. Parallel, resumable, cached per image set."""
    from cpfs_bench.evaluate.proposals import run

    for split, s in run(ProposalsConfig(voc=voc, year=year, splits=tuple(splits), mode=mode, workers=workers,
                                        out=out)).items():
        timing = (f", {s['seconds'] * s['workers'] / s['computed_images']:.2f} s per image per process"
                  if s.get("computed_images") else " (cached)")
        click.echo(f"{split}: {s.get('images', '?')} images, {s.get('boxes_per_image', 0):.0f} boxes per image"
                   f"{timing} -> {s['path']}")


@main.command("results", short_help="Tables of the records beside the paper's.")
@click.option("--store", type=click.Path(dir_okay=False), default=None,
              help="Records file (JSON lines) [$CPFS_BENCH_HOME/results/records.jsonl].")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "latex", "csv"]), default="table", show_default=True)
@click.option("--table", "tables", type=click.Choice(["1", "2", "svm", "all"]), default="all", show_default=True,
              help="The paper's Table 1 (VOC Cls./Det./Seg.), Table 2 (ImageNet per-layer probes), or the VOC07 "
                   "per-layer SVMs.")
@click.option("--method", "methods", multiple=True, help="Only our rows of these methods (repeatable).")
@click.option("--run", "runs", multiple=True, help="Only our rows of these runs (repeatable).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Also write per-layer probe curves (PNG).")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write the tables to a file, not stdout.")
@fails_cleanly
def results_cmd(store, fmt, tables, methods, runs, plot, output):
    """Aggregate the evaluation records into tables shaped like the paper's, its published rows beside
    ours; each of our cells names its protocol, run and checkpoint (legend under the table), and
    numbers measured on other datasets than the paper's stand in blocks of their own."""
    from cpfs_bench.results.store import default_store, read_records
    from cpfs_bench.results.tables import TABLES, render

    path = Path(store) if store else default_store()
    records = read_records(path) if path.exists() else []
    if not records:
        click.echo(f"no records of ours in {path} yet (run `bench eval ...`); showing the paper's numbers", err=True)
    for wanted, key, what in ((methods, "method", "method"), (runs, "run", "run")):
        if wanted and records:
            known = sorted({r.get(key) or r["method"] for r in records})
            unknown = [w for w in wanted if w not in known]
            if unknown:
                raise click.ClickException(f"no records of {what} {', '.join(map(repr, unknown))} in {path}; "
                                           f"its {what}s: {', '.join(known)}")
            records = [r for r in records if (r.get(key) or r["method"]) in wanted]
    chosen = TABLES if tables == "all" else (tables if tables == "svm" else int(tables),)
    text = "\n\n".join(render(records, t, fmt) for t in chosen)
    if output:
        Path(output).write_text(text + "\n")
        click.echo(f"tables written to {output}", err=True)
    else:
        click.echo(text)
    if plot:
        from cpfs_bench.results.plots import plot_linear_probes

        plot_linear_probes(records, plot)
        click.echo(f"probe curves written to {plot}", err=True)


if __name__ == "__main__":
    main()
