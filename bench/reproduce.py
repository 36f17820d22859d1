"""`bench reproduce`: every table of the paper from one command.

The plan: make the checkpoints (CPFS-KTA, CE, CE-rev, direct cls; random, random-rescaled, supervised),
run every evaluation on each (ImageNet linear probes, VOC07 SVMs, VOC07 classification, VOC07
detection, VOC12 segmentation), draw Fig. 1 for each CPFS loss, then write Table 1, Table 2 and the SVM
table (terminal, Markdown, LaTeX, CSV) beside the paper's numbers, the probe plot, and OUT/README.md
(what ran, how long, on what hardware, at which commit, on which data).

Every step is one `bench` command run as a subprocess, its output in OUT/logs/<step>.log: the same
commands a user would type, so a step can be rerun or inspected by hand. A finished step leaves
OUT/steps/<step>.json; a rerun skips those, and a step that was interrupted continues (`--resume` when its
run folder holds last.pt). Each evaluation writes its records to a file of its own, removed before the
step (re)starts, so no record is ever written twice; OUT/records.jsonl is their union. OUT/reproduce.json
holds the settings; a rerun with other settings into the same OUT is refused.

Presets: `smoke` writes tiny worlds into OUT/data and runs every command at toy scale (a pipeline check,
not a measurement); `default` runs every command on the embedded default worlds with the commands' own
defaults there (the ladder scale); `paper` runs the published protocols on real data (--voc, --sbd,
--imagenet, --videos), what a GPU user runs.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cpfs_bench.bench.files import atomic_write_json
from cpfs_bench.bench.losses import LOSSES
from cpfs_bench.bench.registry import DATA_OPTIONS
from cpfs_bench.bench.registry import EVALUATIONS as EVALUATION_SPECS
from cpfs_bench.bench.runs import RunInterrupted, progress_bar

PRESETS = ("smoke", "default", "paper")
CPFS_LOSSES = LOSSES
BASELINES = ("random", "random-rescaled", "supervised")
METHODS = CPFS_LOSSES + BASELINES
EVALUATIONS = tuple(spec.command for spec in EVALUATION_SPECS)
# smoke: every command at toy scale on the tiny worlds written into OUT/data
SMOKE_FLAGS = {
    "pretrain": ["--iters", "10", "--batch-size", "2", "--pixels", "64"],
    "supervised": ["--epochs", "1", "--batch-size", "8"],
    "random-rescaled": ["--batches", "2", "--batch-size", "8"],
    "linear-probe": ["--epochs", "1", "--batch-size", "8"],
    "voc07-svm": ["--costs", "1", "--layers", "conv1,conv3,conv5"],
    "voc07-cls": ["--iters", "3", "--batch-size", "4", "--test-crops", "1"],
    "voc07-det": ["--iters", "3", "--train-images", "6", "--test-images", "6", "--train-scales", "227",
                  "--test-scale", "227"],
    "voc12-seg": ["--iters", "3", "--iter-size", "1"],
}
SMOKE_WORLDS = {
    "videos": ["--clips", "2", "--frames", "8"],
    "voc": ["--voc07-trainval", "16", "--voc07-test", "12", "--voc12-trainval", "40"],
    "imagenet": ["--classes", "4", "--train-per-class", "8", "--val-per-class", "4", "--size", "128"],
}
BENCH = [sys.executable, "-m", "cpfs_bench.bench.cli"]  # the `bench` command of this very installation
VIZ_FRAME = 3  # the frame of the first clip drawn for Fig. 1 (smoke and default write a clip for it)
# planned seconds per kind of step on 2 CPU cores with --jobs 2 (smoke and default: measured means; default from
# its run of 2026-12-07 at 65130c1, 57 min wall, docs/reproduce-default, but for voc12-seg, whose embedded preset
# came later: twice the 1,000-update ladder rung's ~610 s at two runs at once, until a default run measures it;
# paper: a GPU guess)
ESTIMATES = {
    "smoke": {"world": 19, "flow": 18, "pretrain": 12, "random": 7, "random-rescaled": 8, "supervised": 11,
              "linear-probe": 8, "voc07-svm": 12, "voc07-cls": 11, "voc07-det": 12, "voc12-seg": 13, "viz": 8},
    "default": {"world": 8, "flow": 8, "pretrain": 443, "random": 2, "random-rescaled": 16, "supervised": 622,
                "linear-probe": 66, "voc07-svm": 126, "voc07-cls": 196, "voc07-det": 103, "voc12-seg": 1250,
                "viz": 6},
    "paper": {"world": 0, "flow": 3600, "pretrain": 36000, "random": 5, "random-rescaled": 60, "supervised": 86400,
              "linear-probe": 36000, "voc07-svm": 3600, "voc07-cls": 7200, "voc07-det": 36000, "voc12-seg": 7200,
              "viz": 20},
}


@dataclass(frozen=True)
class ReproduceConfig:
    preset: str = "smoke"
    out: str = "reproduce"
    jobs: int = 1  # steps run at once (independent evaluations in parallel)
    voc: str | None = None  # paper: VOCdevkit with VOC2007 and VOC2012
    sbd: str | None = None  # paper: SBD (benchmark_RELEASE)
    imagenet: str | None = None  # paper: ImageNet train/ and val/ class folders
    videos: tuple[str, ...] = ()  # paper: video files or frame folders for pretraining
    seed: int = 0
    methods: tuple[str, ...] = METHODS  # the table rows to make (a part of the plan: e.g. one new method)


@dataclass
class Step:
    """One `bench` command of the plan."""
    name: str
    argv: list[str]
    kind: str  # the key of ESTIMATES
    needs: tuple[str, ...] = ()
    run_folder: Path | None = None  # holds last.pt after an interruption: rerun with --resume
    store: Path | None = None  # the step's own records file
    estimate: float = 0.0
    # removed once the step has finished: its resumable state, and in smoke the fine-tuned evaluation models
    # (an AlexNet is 233 MB; 35 evaluations would otherwise leave ~12 GB)
    transient: tuple[Path, ...] = ()
    output: Path | None = None  # the file the step exists to write (a checkpoint, a figure): checked after it


@dataclass
class Outcome:
    status: dict = field(default_factory=dict)  # step -> "done" | "skipped" | "failed" | "not run"
    seconds: dict = field(default_factory=dict)


class ReproduceError(ValueError):
    """A step failed, or OUT holds a reproduce with other settings."""


def check_config(cfg: ReproduceConfig) -> None:
    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose from {PRESETS}")
    real = {"--voc": cfg.voc, "--sbd": cfg.sbd, "--imagenet": cfg.imagenet, "--videos": cfg.videos}
    if cfg.preset == "paper":
        missing = [k for k, v in real.items() if not v]
        if missing:
            raise ValueError(f"--preset paper runs the published protocols on real data: give {', '.join(missing)}")
    elif any(real.values()):
        raise ValueError(f"--voc/--sbd/--imagenet/--videos go with --preset paper; {cfg.preset} uses "
                         + ("tiny worlds it writes" if cfg.preset == "smoke" else "the embedded default worlds"))
    if cfg.jobs < 1:
        raise ValueError("--jobs must be >= 1")
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise ValueError(f"unknown method(s) {unknown or '(none given)'}; choose from {', '.join(METHODS)}")


def plan(cfg: ReproduceConfig) -> list[Step]:
    """Every step of the preset, in an order that respects `needs`."""
    out = Path(cfg.out).resolve()
    data, runs, records, figures = out / "data", out / "runs", out / "records", out / "figures"
    smoke, paper = cfg.preset == "smoke", cfg.preset == "paper"
    steps: list[Step] = []

    def add(name, argv, kind, needs=(), run_folder=None, store=None, output=None):
        transient = () if run_folder is None else (run_folder / "last.pt",)
        if smoke and store is not None and run_folder is not None:
            transient += (run_folder / "final.pt",)
        steps.append(Step(name, [str(a) for a in argv], kind, tuple(needs), run_folder, store, transient=transient,
                          output=output))

    # data
    voc = sbd = imagenet = flow = None
    data_steps: tuple[str, ...] = ()
    if smoke:
        for world in ("videos", "voc", "imagenet"):
            add(f"world-{world}", ["world", world, "--out", data / world, "--seed", cfg.seed, *SMOKE_WORLDS[world]],
                "world", output=data / world)
        voc = sbd = data / "voc"
        imagenet = data / "imagenet"
        data_steps = ("world-voc", "world-imagenet")
    elif paper:
        voc, sbd, imagenet = Path(cfg.voc).resolve(), Path(cfg.sbd).resolve(), Path(cfg.imagenet).resolve()
    if not paper:  # a clip for the figures (and smoke's pretraining data)
        if not smoke:
            add("world-videos", ["world", "videos", "--out", data / "videos", "--seed", cfg.seed,
                                 *SMOKE_WORLDS["videos"]], "world", output=data / "videos")
        add("flow", ["flow", data / "videos" / "videos", "--out", data / "flow"], "flow", ("world-videos",),
            output=data / "flow")
    else:
        add("flow", ["flow", *[Path(v).resolve() for v in cfg.videos], "--out", data / "flow"], "flow",
            output=data / "flow")
    if smoke or paper:
        flow = data / "flow"

    # checkpoints
    checkpoints: dict[str, tuple[Path, str]] = {}
    for loss in [m for m in CPFS_LOSSES if m in cfg.methods]:
        folder = runs / f"pretrain-{loss}"
        argv = ["pretrain", "--loss", loss, "--out", folder, "--seed", cfg.seed]
        argv += ["--data", flow] if flow else []
        add(f"pretrain-{loss}", argv + (SMOKE_FLAGS["pretrain"] if smoke else []), "pretrain",
            ("flow",) if flow else (), folder, output=folder / "final.pt")
        checkpoints[loss] = (folder / "final.pt", f"pretrain-{loss}")
    if "random" in cfg.methods:
        add("random", ["baseline", "random", "--out", runs / "random.pt", "--seed", cfg.seed], "random",
            output=runs / "random.pt")
        checkpoints["random"] = (runs / "random.pt", "random")
    if "random-rescaled" in cfg.methods:
        argv = ["baseline", "random-rescaled", "--out", runs / "random-rescaled.pt", "--seed", cfg.seed]
        argv += ["--images", imagenet / "train"] if imagenet else []
        add("random-rescaled", argv + (SMOKE_FLAGS["random-rescaled"] if smoke else []), "random-rescaled",
            data_steps, output=runs / "random-rescaled.pt")
        checkpoints["random-rescaled"] = (runs / "random-rescaled.pt", "random-rescaled")
    if "supervised" in cfg.methods:
        folder = runs / "supervised"
        argv = ["baseline", "supervised", "--out", folder, "--seed", cfg.seed]
        argv += ["--data", imagenet] if imagenet else []
        add("supervised", argv + (SMOKE_FLAGS["supervised"] if smoke else []), "supervised", data_steps, folder,
            output=folder / "final.pt")
        checkpoints["supervised"] = (folder / "final.pt", "supervised")

    # evaluations
    folders = {"voc": voc, "sbd": sbd, "imagenet": imagenet}
    for method, (ckpt, maker) in checkpoints.items():
        for spec in EVALUATION_SPECS:
            evaluation = spec.command
            name = f"{evaluation}-{method}"
            store = records / f"{name}.jsonl"
            argv = ["eval", evaluation, "--ckpt", ckpt, "--name", method, "--store", store]
            if all(folders[d] for d in spec.data):  # else the embedded world
                argv += [a for d in spec.data for a in (DATA_OPTIONS[d], folders[d])]
            folder = None
            if spec.folder:
                folder = runs / name
                argv += ["--out", folder]
            else:  # the SVMs keep no run folder but a feature cache
                argv += ["--cache", out / "cache" / "features"]
            argv += SMOKE_FLAGS[evaluation] if smoke else []
            add(name, argv, evaluation, (maker, *data_steps), folder, store, output=store)
    for loss in [m for m in CPFS_LOSSES if m in cfg.methods]:
        ckpt = checkpoints[loss][0]
        figure = figures / f"fig1-{loss}.png"
        if paper:
            add(f"viz-{loss}", ["viz", "--ckpt", ckpt, "--video", Path(cfg.videos[0]).resolve(), "--out", figure],
                "viz", (f"pretrain-{loss}",), output=figure)
        else:
            clip = data / "flow" / "clip_000"
            add(f"viz-{loss}", ["viz", "--ckpt", ckpt, "--frame", clip / "frames" / f"{VIZ_FRAME:06d}.jpg",
                                "--flow", clip / "flow" / f"{VIZ_FRAME:06d}.png", "--out", figure], "viz",
                (f"pretrain-{loss}", "flow"), output=figure)
    for step in steps:
        step.estimate = ESTIMATES[cfg.preset][step.kind]
    return steps


def settings(cfg: ReproduceConfig) -> dict:
    """What must match for a rerun into the same OUT (jobs may change, and methods: rows can be added later)."""
    return {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items() if k not in ("jobs", "out", "methods")}


def claim_folder(cfg: ReproduceConfig) -> None:
    """Write OUT/reproduce.json, or refuse when OUT holds a reproduce with other settings, naming them."""
    out = Path(cfg.out)
    path = out / "reproduce.json"
    wanted = settings(cfg)
    if path.exists():
        saved = json.loads(path.read_text())
        clash = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
        if clash:
            described = "; ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in clash.items())
            raise ReproduceError(f"{out} holds a reproduce with other settings ({described}); rerun it with those "
                                 f"settings to continue, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, wanted)


def marker(out: Path, step: Step) -> Path:
    return out / "steps" / f"{step.name}.json"


def finished_steps(out: Path, steps: list[Step]) -> tuple[set[str], dict[str, str]]:
    """The steps to skip, and {step: why it reruns} for those whose marker exists but no longer holds: its output
    (a checkpoint, a records file, a data folder) is gone, or a step it needs reruns (its inputs may change)."""
    done: set[str] = set()
    stale: dict[str, str] = {}
    planned = {s.name for s in steps}
    for s in steps:  # in plan order: needs come first
        if not marker(out, s).exists():
            continue
        rerun = [n for n in s.needs if n in planned and n not in done]
        if s.output is not None and not s.output.exists():
            stale[s.name] = f"{s.output} is missing"
        elif rerun:
            stale[s.name] = f"{', '.join(rerun)} reruns"
        else:
            done.add(s.name)
    return done, stale


def format_seconds(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def describe_plan(steps: list[Step], done: set[str], jobs: int, stale: dict[str, str] | None = None) -> str:
    """The plan as text: each step, its estimate, whether it is already done (or reruns, and why); the total left."""
    stale = stale or {}
    lines = [f"{'step':<28} {'estimate':>9}  status"]
    for s in steps:
        status = ("done (skipped)" if s.name in done else f"to run again: {stale[s.name]}" if s.name in stale
                  else "to run")
        lines.append(f"{s.name:<28} {format_seconds(s.estimate):>9}  {status}")
    left = sum(s.estimate for s in steps if s.name not in done)
    lines.append(f"{len(steps)} steps, {len(done)} already done; about {format_seconds(left)} of work left"
                 + (f" (run {jobs} at a time: about {format_seconds(left / jobs)} wall)" if jobs > 1 else ""))
    return "\n".join(lines)


def _command(step: Step) -> list[str]:
    argv = list(step.argv)
    if step.run_folder is not None and (step.run_folder / "last.pt").exists():
        argv.append("--resume")
    return [*BENCH, *argv]


def execute(cfg: ReproduceConfig, steps: list[Step], progress: bool = True) -> Outcome:
    """Run the steps not done yet, at most cfg.jobs at once, each when its needs are done. SIGINT/SIGTERM stop the
    running commands (they save resumable state) and raise RunInterrupted: rerunning continues."""
    out = Path(cfg.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "steps").mkdir(parents=True, exist_ok=True)
    outcome = Outcome()
    finished, stale = finished_steps(out, steps)
    for step in steps:
        if step.name in stale:
            marker(out, step).unlink()
    step_commit: dict[str, str] = {}  # read as each step starts: the code it ran, even if the tree changes meanwhile
    for name in finished:
        outcome.status[name] = "skipped"
    pending = [s for s in steps if s.name not in finished]
    running: dict[str, tuple[Step, subprocess.Popen, float, object]] = {}
    failed: list[str] = []  # once a step fails, no new one starts; the running ones finish
    signalled: set[str] = set()
    stop = {"signal": None, "count": 0}

    def on_signal(signum, _frame):
        stop["signal"] = signum
        stop["count"] += 1
        if stop["count"] == 2:  # asked twice: pass the second signal on, the commands stop at once
            signalled.clear()

    handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = progress_bar(total=round(sum(s.estimate for s in steps)), initial=round(sum(
        s.estimate for s in steps if s.name in finished)), desc="reproduce", unit="s", disable=not progress)
    try:
        while pending or running:
            if stop["signal"] is None and not failed:
                for step in [s for s in pending if all(n in finished for n in s.needs)]:
                    if len(running) >= cfg.jobs:
                        break
                    if step.store is not None and step.store.exists():
                        step.store.unlink()  # records of an interrupted attempt: rewritten in full
                    log = open(out / "logs" / f"{step.name}.log", "w")
                    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                    # the cores shared between the commands running at once: each torch otherwise takes them all,
                    # and two pretrainings on 2 cores then ran 3x slower per step than one alone (measured)
                    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.jobs)))
                    process = subprocess.Popen(_command(step), stdout=log, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True)
                    running[step.name] = (step, process, time.perf_counter(), log)
                    step_commit[step.name] = commit()
                    pending.remove(step)
            if stop["signal"] is not None:
                for name, (_, process, _, _) in running.items():
                    if name not in signalled and process.poll() is None:
                        # once: each command saves its resumable state (a second signal would stop it at once)
                        process.send_signal(signal.SIGTERM)
                        signalled.add(name)
            if not running:
                break
            if getattr(bar, "postfix", None) != ", ".join(running):
                bar.set_postfix_str(", ".join(running))
            time.sleep(0.2)
            for name, (step, process, start, log) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[name]
                seconds = time.perf_counter() - start
                outcome.seconds[name] = seconds
                if (process.returncode == 0 and stop["signal"] is None and step.output is not None
                        and not step.output.exists()):
                    with open(out / "logs" / f"{name}.log", "a") as f:
                        f.write(f"\nbench reproduce: the command exited 0 but did not write {step.output}\n")
                    failed.append(name)
                    outcome.status[name] = "failed"
                elif process.returncode == 0 and stop["signal"] is None:
                    atomic_write_json(marker(out, step), {"argv": step.argv, "seconds": round(seconds, 1),
                                                          "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                          "commit": step_commit[name], "jobs": cfg.jobs})
                    finished.add(name)
                    outcome.status[name] = "done"
                    for path in step.transient:
                        path.unlink(missing_ok=True)
                    bar.update(round(step.estimate))
                elif stop["signal"] is None:
                    failed.append(name)
                    outcome.status[name] = "failed"
                else:
                    outcome.status[name] = "interrupted"
    finally:
        bar.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    for s in pending:
        outcome.status.setdefault(s.name, "not run")
    if stop["signal"] is not None:
        raise RunInterrupted(f"reproduce stopped by {signal.Signals(stop['signal']).name}; the finished steps are kept "
                             f"and the running ones saved their state: rerun the same command to continue")
    if failed:
        logs = ", ".join(str(out / "logs" / f"{n}.log") for n in failed)
        raise ReproduceError(f"step(s) {', '.join(failed)} failed; see {logs}. Rerun to retry them (finished steps "
                             f"are kept)")
    return outcome


def merge_records(out: Path) -> Path:
    """OUT/records.jsonl = the union of every step's records file (rewritten, so nothing is counted twice)."""
    lines = []
    for path in sorted((out / "records").glob("*.jsonl")):
        lines += [line for line in path.read_text().splitlines() if line.strip()]
    target = out / "records.jsonl"
    target.write_text("".join(line + "\n" for line in lines))
    return target


def write_tables(out: Path, store: Path) -> dict[str, Path]:
    """Tables 1, 2 and SVM in each format, and the probe plot, via `bench results`; {format: path}."""
    tables = out / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt, suffix in (("table", "txt"), ("md", "md"), ("latex", "tex"), ("csv", "csv")):
        path = tables / f"tables.{suffix}"
        argv = ["results", "--store", store, "--format", fmt, "--output", path]
        if fmt == "table":
            argv += ["--plot", tables / "probes.png"]
        done = subprocess.run([*BENCH, *map(str, argv)], capture_output=True, text=True)
        if done.returncode != 0:
            raise ReproduceError(f"bench results failed: {done.stderr.strip()}")
        written[fmt] = path
    return written


def hardware() -> str:
    import torch

    gpu = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU")
    return (f"{platform.platform()}; {os.cpu_count()} CPU cores; {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def commit() -> str:
    """The git commit of the installed cpfs-bench source (with '+changes' when the tree differs), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha.stdout.strip() + (" +uncommitted changes" if dirty else "")


def short_commit(full: str | None) -> str:
    """'<40 hex> +uncommitted changes' -> '<12 hex> +changes'; None (a marker written before commits were kept)."""
    if not full:
        return "not recorded"
    sha, _, rest = full.partition(" ")
    return sha[:12] + (" +changes" if rest else "")


def write_readme(cfg: ReproduceConfig, steps: list[Step], outcome: Outcome, tables: dict[str, Path],
                 wall: float) -> Path:
    """OUT/README.md: what ran, how long, on what, at which commit, on which data, and the tables."""
    out = Path(cfg.out)
    videos = ", ".join(cfg.videos)
    data = {"smoke": "tiny worlds written into data/ (`bench world ...`, see the plan); numbers are a pipeline "
                     "check, never comparable with the paper's",
            "default": "the embedded default worlds ($CPFS_BENCH_HOME/world/); numbers are about the embedded "
                       "world, never comparable with the paper's",
            "paper": f"VOC {cfg.voc}; SBD {cfg.sbd}; ImageNet {cfg.imagenet}; videos {videos}"}[cfg.preset]
    # every finished step in OUT, this plan's first: a folder filled over several invocations (other --methods,
    # sessions, commits) says of each step when, at which commit and how long
    planned = [marker(out, s) for s in steps]
    others = sorted(set((out / "steps").glob("*.json")) - set(planned))
    rows, total, commits = [], 0.0, set()
    for path in planned + others:
        record = json.loads(path.read_text()) if path.exists() else {}
        name = path.stem
        status = outcome.status.get(name, "earlier invocation")
        argv = record.get("argv") or next((s.argv for s in steps if s.name == name), [])
        spent = record.get("seconds")
        total += spent or 0.0
        if record.get("commit"):
            commits.add(record["commit"])
        rows.append(f"| {name} | `bench {' '.join(argv)}` | {status} | {record.get('finished', '-')} | "
                    f"{short_commit(record.get('commit'))} | " + (f"{spent:.0f}" if spent is not None else "-") + " |")
    spread = f" (its steps ran at {len(commits)} commits: see below)" if len(commits) > 1 else ""
    figures = sorted((out / "figures").glob("*.png"))
    text = "\n".join([
        f"# cpfs-bench reproduce ({cfg.preset})", "",
        f"- Commit: {commit()}{spread}", f"- Hardware: {hardware()}", f"- Data: {data}",
        f"- Finished {time.strftime('%Y-%m-%d %H:%M:%S')}; this invocation {format_seconds(wall)} wall, all steps "
        f"together {format_seconds(total)} of command time ({cfg.jobs} at a time).",
        "- Tables: " + ", ".join(f"[{p.name}](tables/{p.name})" for p in tables.values())
        + ", probe plot [probes.png](tables/probes.png)",
        "- Figures: " + ", ".join(f"[{p.name}](figures/{p.name})" for p in figures), "",
        "## Tables", "", tables["md"].read_text(), "", "## What ran", "",
        "| step | command | status (this invocation) | finished | commit | seconds |", "|---|---|---|---|---|---|",
        *rows, ""])
    path = out / "README.md"
    path.write_text(text)
    return path


def run(cfg: ReproduceConfig, progress: bool = True, echo=print) -> dict:
    """Plan, run what is not done, write the tables and README. Returns {"out", "readme", "tables", "outcome",
    "steps"}."""
    check_config(cfg)
    claim_folder(cfg)
    out = Path(cfg.out)
    steps = plan(cfg)
    done, stale = finished_steps(out, steps)
    echo(describe_plan(steps, done, cfg.jobs, stale))
    start = time.perf_counter()
    outcome = execute(cfg, steps, progress)
    store = merge_records(out)
    tables = write_tables(out, store)
    readme = write_readme(cfg, steps, outcome, tables, time.perf_counter() - start)
    return {"out": str(out), "readme": str(readme), "tables": {k: str(v) for k, v in tables.items()},
            "outcome": outcome, "steps": steps}
