"""Run plumbing shared by every training loop (`bench pretrain`, `bench baseline supervised`, the probes,
the fine-tuning loops): one step driver, `TrainingRun`, and the pieces it is made of.

A loop keeps only its data, forward and backward, read top to bottom (as torchvision's train_one_epoch):

    run = TrainingRun(cfg.out, "eval voc07-cls", config, resume=cfg.resume, must_match=RESUME_MUST_MATCH,
                      total=cfg.iters, unit="iteration", log_key="iter", desc="voc07-cls fine-tuning",
                      device=device, progress=progress, ckpt_every=cfg.ckpt_every, save_minutes=cfg.save_minutes)
    ... build the model and the optimizer ...
    state = run.restore(optimizer)          # None for a fresh run; else optimizer, RNG and step restored
    if state: model.load_state_dict(state["head"])
    loader = DataLoader(..., batch_sampler=StepBatchSampler(..., run.step, cfg.iters))
    with run.start(optimizer, lambda: dict(arch=..., trunk=..., head=..., loss=..., extra=...)):
        for images, labels in run.batches(loader):
            with run.autocast():
                loss = ...
            run.check_finite(loss)          # TrainingDiverged: the step, the last good state, the resume command
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            run.step_done({"loss": loss.item(), "lr": lr})   # log, progress, periodic and wall-time saves, signals
    run.finish(plot_title="voc07-cls fine-tuning")       # final.pt and loss.png when the run is complete

Epoch loops (`for epoch in run.epochs():`, ckpt_every=1) call `run.raise_if_stopping(where)` within an
epoch: a signal there stops at once, and a resume redoes that epoch from the state saved at its start.

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

    def __init__(self, out, command: str, config: dict, resume: bool, must_match=(), defaults: dict | None = None):
        """defaults: the value of a setting a run's config.json lacks (saved before the setting existed)."""
        config = json.loads(json.dumps(config))  # as config.json holds it (tuples -> lists)
        defaults = json.loads(json.dumps(defaults or {}))
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
                saved = {**{k: v for k, v in defaults.items() if k in must_match}, **saved}
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


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step, the last good state and what to try."""


class TrainingRun:
    """The step driver every training loop runs on: the run folder (config.json, refusal of other
    settings on --resume), the JSON-lines log, the progress bar, SIGINT/SIGTERM and wall-time saves,
    bf16 autocast on CUDA, the finite-loss check, periodic and final saves and the loss plot.

    total: steps of the run (iterations, updates or epochs; `unit` names them in messages and
    `log_key` in log.jsonl); ckpt_every: last.pt every this many steps (and at the end, on a signal,
    after `save_minutes` of wall time); stop_after: leave after that step with last.pt written, as a
    preempted job would (tests of exact resumes)."""

    def __init__(self, out, command: str, config: dict, *, resume: bool, must_match=(), total: int,
                 unit: str = "step", log_key: str = "step", desc: str = "", device=None, progress: bool = True,
                 ckpt_every: int = 100, save_minutes: float = 10.0, stop_after: int | None = None, amp: bool = True,
                 defaults: dict | None = None):
        self.folder = RunFolder(out, command, config, resume, must_match, defaults)
        self.config = config
        self.resuming = resume
        self.total, self.unit, self.log_key, self.desc = total, unit, log_key, desc
        self.device, self.progress, self.amp = device, progress, amp
        self.ckpt_every, self.save_minutes, self.stop_after = ckpt_every, save_minutes, stop_after
        self.step = 0
        self.start_step = 0
        self.saved_step: int | None = None  # the step last.pt holds (restored or written by this run)
        self.optimizer = None
        self.parts = None
        self.log = self.bar = self.stop = None

    @classmethod
    def for_config(cls, cfg, command: str, *, must_match, total: int, unit: str, log_key: str, desc: str, device,
                   progress: bool = True, stop_after: int | None = None, **config_extra) -> TrainingRun:
        """The run of a command's config dataclass: its folder (cfg.out), --resume, save cadence (cfg.ckpt_every,
        else every step: an epoch loop's) and cfg.save_minutes, amp (cfg.amp, else on); config.json holds
        asdict(cfg) and `config_extra` (e.g. the trunk's sha256, so a resume on another trunk is refused); a setting
        a run's config.json lacks (saved before the setting existed) counts as the dataclass default."""
        from dataclasses import MISSING, asdict, fields

        defaults = {f.name: f.default for f in fields(cfg) if f.default is not MISSING}
        return cls(cfg.out, command, {**asdict(cfg), **config_extra}, resume=cfg.resume, must_match=must_match,
                   defaults=defaults,
                   total=total, unit=unit, log_key=log_key, desc=desc, device=device, progress=progress,
                   ckpt_every=getattr(cfg, "ckpt_every", 1), save_minutes=cfg.save_minutes, stop_after=stop_after,
                   amp=getattr(cfg, "amp", True))

    @property
    def out(self) -> Path:
        return self.folder.out

    def restore(self, optimizer=None) -> dict | None:
        """On --resume: read last.pt, restore the optimizer (when given) and the RNG states, set `step`;
        returns the checkpoint, whose model parts the loop loads itself. None for a fresh run. Call it
        after building the model (which draws from the global RNG) and before building the loader."""
        if not self.resuming:
            return None
        from cpfs_bench.bench.checkpoint import load_checkpoint, set_rng_state

        state = load_checkpoint(self.folder.last)
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.step = self.start_step = self.saved_step = state["step"]
        return state

    def start(self, optimizer, parts):
        """Begin the steps; use as `with run.start(optimizer, parts):`. parts() -> {arch, trunk, head, loss,
        extra} of the checkpoint, read at each save (the optimizer's state and RNG are added for last.pt)."""
        self.optimizer, self.parts = optimizer, parts
        return self

    def __enter__(self):
        self.log = JsonlLog(self.folder.log_path, resume_at=self.step if self.resuming else None, key=self.log_key)
        self.bar = progress_bar(total=self.total, initial=self.step, desc=self.desc, unit=self.unit,
                                disable=not self.progress)
        if self.resuming and self.progress:
            self.bar.write(f"resuming from {self.unit} {self.step} of {self.total} ({self.folder.last})")
        self.stop = StopRequests(self.folder, self.save_minutes).__enter__()
        return self

    def __exit__(self, *exc):
        self.stop.__exit__(*exc)
        self.bar.close()
        self.log.close()
        return False

    @property
    def done(self) -> bool:
        """No step left: the run is complete, or stop_after was reached."""
        return self.step >= self.total or self.step == self.stop_after

    def batches(self, iterable):
        """The loader's batches while steps are left (a loader may hold more than the steps left)."""
        if self.done:
            return
        for batch in iterable:
            yield batch
            if self.done:
                return

    def epochs(self):
        """The epochs left: start_step .. total - 1 (an epoch loop's step is an epoch)."""
        while not self.done:
            yield self.step

    def autocast(self):
        """bf16 autocast on CUDA when amp is on; a no-op context elsewhere."""
        import torch

        device_type = getattr(self.device, "type", "cpu")
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.amp and device_type == "cuda")

    def check_finite(self, loss) -> float:
        """loss.item(), or TrainingDiverged naming the step, the last good state and the resume command."""
        value = float(loss.item() if hasattr(loss, "item") else loss)
        if not math.isfinite(value):
            if self.folder.last.exists():
                at = f", {self.unit} {self.saved_step}," if self.saved_step is not None else ""
                kept = (f"The last good checkpoint{at} is {self.folder.last}: after a lower --lr, resume with "
                        f"`{self.folder.resume_command()}`")
            else:
                kept = "No state was saved yet (none written yet); start again"
            raise TrainingDiverged(f"{self.desc}: loss became {value} at {self.unit} {self.step + 1}; stopped. "
                                   f"{kept}; try a lower --lr")
        return value

    def write(self, record: dict) -> None:
        """A line of log.jsonl outside the step count (counts before training, validation scores)."""
        self.log.write(record)

    def step_done(self, record: dict | None = None, postfix: dict | None = None, log: bool = True) -> None:
        """One step finished: count it, log `record` (keyed by the step), show `postfix` (default: the
        record's loss), save last.pt when due, and raise RunInterrupted when a signal asked to stop."""
        self.step += 1
        record = record or {}
        if log:
            self.log.write({self.log_key: self.step, **record})
        if postfix is None and "loss" in record:
            postfix = {"loss": f"{record['loss']:.4f}"}
        if postfix:
            self.bar.set_postfix(postfix)
        self.bar.update(1)
        if self.stop.save_due(self.step % self.ckpt_every == 0 or self.step == self.total
                              or self.step == self.stop_after):
            self.save(self.folder.last, resumable=True)
        self.stop.raise_if_requested(f"{self.unit} {self.step}")

    def raise_if_stopping(self, where: str) -> None:
        """Within a step (an epoch loop's batch): stop at once after a signal; the resume redoes the step
        from the state saved at its start."""
        if self.stop.requested:
            self.stop.raise_if_requested(f"{where} (a resume restarts {self.unit} {self.step + 1} from the state "
                                         f"saved at its start)")

    def save(self, path, resumable: bool) -> None:
        """The checkpoint of the loop at the current step: last.pt (resumable: optimizer and RNG states
        too) or weights only (final.pt, snapshots)."""
        from cpfs_bench.bench.checkpoint import save_checkpoint

        parts = self.parts()
        save_checkpoint(path, step=self.step, config=self.config,
                        optimizer=self.optimizer.state_dict() if resumable and self.optimizer is not None else None,
                        with_rng=resumable, **parts)
        if resumable and Path(path) == self.folder.last:
            self.saved_step = self.step

    @property
    def complete(self) -> bool:
        return self.step >= self.total

    def finish(self, plot_title: str | None = None, plot=None, plot_value: str = "loss") -> bool:
        """After the steps: when the run is complete write final.pt (also when a stop arrived between the
        last step's last.pt and final.pt, so a resume has no step left) and, when steps ran, the loss
        plot: `plot(log_path, png_path, title)` (default bench.curves.plot_loss_curve of the log's
        `plot_value`). True when complete."""
        if not self.complete:
            return False
        if self.step > self.start_step or not self.folder.final.exists():
            self.save(self.folder.final, resumable=False)
        if self.step > self.start_step and plot_title is not None:
            from cpfs_bench.bench.curves import plot_loss_curve

            (plot or (lambda log, png, title: plot_loss_curve(log, png, key=self.log_key, value=plot_value,
                                                              title=title)))(
                self.folder.log_path, self.folder.out / "loss.png", plot_title)
        return True
