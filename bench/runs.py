"""Run plumbing shared by every training loop (`bench pretrain`, the probes, the fine-tuning loops).

A loop reads top to bottom over these pieces:

    device = resolve_device(cfg.device)
    folder = RunFolder(out, "pretrain", asdict(cfg), resume=cfg.resume, must_match=(...))
    log = JsonlLog(folder.log_path, resume_at=start_step)       # a fresh run starts a fresh log
    with StopRequests(folder, save_minutes=10) as stop:
        for step ...:
            lr = scheduled_lr("cosine", cfg.lr, step, cfg.iters)
            ...
            if stop.save_due(step == cfg.iters): save last.pt
            stop.raise_if_requested(step)    # after SIGINT/SIGTERM: state saved, RunInterrupted raised

Checkpoints of a loop's state use the one format of bench/checkpoint.py (model parts, optimizer,
step, RNG states; bf16 autocast needs no gradient scaler, so there is none to keep).
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

from tqdm import tqdm

from cpfs_bench.bench.files import atomic_write_json

SCHEDULES = ("cosine", "step", "constant")


def resolve_device(name: str):
    """"auto" -> cuda when available, else cpu; "cpu", "cuda", "cuda:N" as given (ValueError when
    CUDA is asked for and absent). Returns a torch.device."""
    import torch  # here, not at the top: SVM worker processes import this module and need no torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r}: {e}; use auto, cpu or cuda[:N]") from None


def loader_workers(requested: int | None, device) -> int:
    """Data-loading processes: as requested, else 0 on CPU (the cores are busy with the model) and
    min(8, cores) on CUDA (the GPU must not wait for decoding)."""
    if requested is not None:
        return requested
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def scheduled_lr(schedule: str, base_lr: float, t: float, total: float, milestones=(0.5, 0.75),
                 gamma: float = 0.1) -> float:
    """Learning rate at progress t of total (steps or epochs, any unit):
    cosine  base * (1 + cos(pi t / total)) / 2
    step    base * gamma^(number of milestones <= t / total); milestones are fractions of total
    constant base."""
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * t / max(total, 1e-12)))
    if schedule == "step":
        return base_lr * gamma ** sum(t >= m * total for m in milestones)
    if schedule == "constant":
        return base_lr
    raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")


def caffe_step_lr(base_lr: float, gamma: float, stepsize: int, it: int) -> float:
    """Caffe's "step" policy at iteration it: base_lr * gamma^floor(it / stepsize)."""
    return base_lr * gamma ** (it // stepsize)


def progress_bar(iterable=None, **kw) -> tqdm:
    """tqdm with the project's settings (off when `disable`)."""
    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kw)


class RunFolder:
    """A training run's folder: config.json (every resolved option), last.pt (resumable state),
    final.pt (weights only, what evaluations take), log.jsonl.

    A fresh run refuses a folder that already holds last.pt; `resume` needs last.pt and refuses
    when any setting in `must_match` differs from the one the run was started with, naming each."""

    def __init__(self, out, command: str, config: dict, resume: bool, must_match=()):
        config = json.loads(json.dumps(config))  # as config.json holds it (tuples -> lists)
        self.out = Path(out)
        self.command = command
        self.last = self.out / "last.pt"
        self.final = self.out / "final.pt"
        self.log_path = self.out / "log.jsonl"
        self.config_path = self.out / "config.json"
        if self.last.exists() and not resume:
            raise FileExistsError(f"{self.out} already holds a run ({self.last}); resume it with "
                                  f"`{self.resume_command()}` or choose another --out")
        if resume:
            if not self.last.exists():
                from cpfs_bench.bench.checkpoint import CheckpointError

                raise CheckpointError(f"--resume: {self.last} does not exist (nothing to resume in {self.out})")
            if self.config_path.exists():
                saved = json.loads(self.config_path.read_text())["config"]
                clash = {k: (saved.get(k), config.get(k)) for k in must_match if saved.get(k) != config.get(k)}
                if clash:
                    from cpfs_bench.bench.checkpoint import CheckpointError

                    described = "; ".join(f"{k}: run has {a!r}, asked {b!r}" for k, (a, b) in clash.items())
                    raise CheckpointError(f"{self.out}: cannot resume, the run was started with other settings "
                                          f"({described}); rerun it as `{self.resume_command()}` or choose another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_path, {"command": command, "config": config})

    def resume_command(self) -> str:
        return f"bench {self.command} --config {self.config_path} --resume"


class JsonlLog:
    """A JSON-lines log. A fresh run (resume_at None) starts it empty; a resumed one keeps only the
    lines up to the resumed checkpoint (`key` <= resume_at), so steps logged after the last save and
    then lost are not repeated."""

    def __init__(self, path, resume_at: int | None = None, key: str = "step"):
        self.path = Path(path)
        kept = []
        if resume_at is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash
                if isinstance(rec, dict) and isinstance(rec.get(key), int) and rec[key] <= resume_at:
                    kept.append(line + "\n")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w")
        self._f.writelines(kept)
        self._f.flush()

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class RunInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; the loop saved its state first. The message says how to resume."""


class StopRequests:
    """Within `with`: SIGINT (Ctrl-C) and SIGTERM (preemption) ask the loop to stop at the end of the
    current step instead of killing it; a second signal stops at once. `save_due` also says when
    `save_minutes` of wall time have passed since the last save."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, folder: RunFolder, save_minutes: float = 10.0):
        self.folder = folder
        self.save_seconds = save_minutes * 60
        self.signal_name: str | None = None
        self._last_save = time.monotonic()
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: signals cannot be caught here
            self._previous = {}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def save_due(self, forced: bool = False) -> bool:
        """True when the loop should write its resumable state now (forced, stop asked, or wall time);
        the caller saves and the clock restarts."""
        due = forced or self.requested or time.monotonic() - self._last_save >= self.save_seconds
        if due:
            self._last_save = time.monotonic()
        return due

    def raise_if_requested(self, where: str) -> None:
        if self.requested:
            if not self.folder.last.exists():
                raise RunInterrupted(f"{self.signal_name} received: stopped after {where}, before any state was "
                                     f"saved; start it again (nothing to resume in {self.folder.out})")
            raise RunInterrupted(f"{self.signal_name} received: stopped after {where}, state saved to "
                                 f"{self.folder.last}; resume with `{self.folder.resume_command()}`")
