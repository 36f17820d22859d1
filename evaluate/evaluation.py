"""One entry and one exit for every evaluation (`bench eval <task>`).

Entry, `prepare`: the config resolved (the embedded world gets the task's embedded preset; a value the user typed is
never overridden; deviations from the protocol), the device and seed, the checkpoint validated and
loaded (a trunk, or an evaluation-only model) *before* the default world is written, the default world,
one line saying which preset ran and what it changed, the run's name, method and folder.
Exit, `Evaluation.record` + `Evaluation.write`: the results records, each with the same identity
(method, run, protocol, deviations, checkpoint, dataset), appended to the store in one write.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from cpfs_bench.bench.config import dataclass_defaults, preset_line
from cpfs_bench.bench.runs import resolve_device
from cpfs_bench.evaluate.backbone import default_method_name, default_run_name, evaluation_folder, load_trunk


@dataclass
class Evaluation:
    """A prepared evaluation: its resolved config, the trunk or model to evaluate and the records it writes."""

    kind: str  # the command and folder name, e.g. "voc07-cls"
    task: str  # the records' task, e.g. "voc07_cls"
    protocol: str
    cfg: Any
    deviations: dict
    device: Any
    info: dict  # load_trunk's info of the evaluated checkpoint (the pretrained one, also for --model)
    checkpoint: str  # its path
    run_name: str
    method: str
    out: Path | None  # the run folder (None for evaluations that keep no folder)
    trunk: Any = None  # the loaded trunk (frozen or trainable); None with --model
    model: Any = None  # what load_model returned for --model (evaluation only)
    started: float = field(default_factory=time.perf_counter)
    records: list = field(default_factory=list)
    dataset_info: dict | None = None
    dataset: str | None = None
    split: str | None = None
    init_report: dict | None = None  # what --init did to the loaded trunk (evaluate/initialization.py)

    @property
    def eval_only(self) -> bool:
        return self.model is not None

    def test_set(self, root, classes: int, split: str, images: int) -> None:
        """The dataset every following record names (bench.world.defaults.describe_dataset)."""
        from cpfs_bench.bench.world.defaults import describe_dataset

        self.dataset, self.split = str(root), split
        self.dataset_info = describe_dataset(root, classes, split, images)

    def record(self, metric: str, value: float, layer: str | None = None, extra: dict | None = None,
               split: str | None = None) -> dict:
        """One result record with this evaluation's identity (results.store.make_record); kept until `write`."""
        from cpfs_bench.results.store import make_record

        if self.init_report is not None and not self.records:  # the headline record carries it
            extra = {**(extra or {}), "init": self.init_report}
        rec = make_record(self.task, metric, value, method=self.method, run=self.run_name, protocol=self.protocol,
                          layer=layer, deviations=self.deviations, checkpoint=self.checkpoint,
                          checkpoint_sha256=self.info["sha256"], checkpoint_step=self.info["step"],
                          dataset=self.dataset, dataset_info=self.dataset_info, split=split or self.split, extra=extra)
        self.records.append(rec)
        return rec

    def write(self) -> Path:
        """Append the records to the store (cfg.store, else the default one) in one write; returns the store."""
        from cpfs_bench.results.store import append_records, default_store

        store = Path(self.cfg.store) if getattr(self.cfg, "store", None) else default_store()
        append_records(store, self.records)
        return store

    def summary(self, **values) -> dict:
        """What run() returns: `values` plus out, method, run, deviations and seconds."""
        return {**values, "out": str(self.out) if self.out else None, "method": self.method, "run": self.run_name,
                "deviations": self.deviations, "seconds": time.perf_counter() - self.started}


def init_line(report: dict) -> str:
    """One line saying what --init did (evaluate/initialization.py's report)."""
    parts = [f"--init {report['init']} on {report['images']} training images"]
    if report["folded_batchnorm"]:
        parts.append("BatchNorm folded into the weights")
    if report["fc"]:
        parts.append("fc6/fc7 drawn again (magic_init elwise)")
    if report["ratio_spread"]:
        first, last = report["ratio_spread"]
        scales = " ".join(f"{k} x{v:.3g}" for k, v in report["weight_scale"].items())
        parts.append(f"gradient/weight ratio spread {first:.3g} -> {last:.3g} in {report['rounds']} rounds ({scales})")
    return "; ".join(parts)


def prepare(cfg, *, kind: str, task: str, protocol: str, resolve_config: Callable, explicit=(),
            data_fields=("voc",), default_world: Callable | None = None, progress: bool = True,
            trunk: str = "frozen", load_model: Callable | None = None, folder: bool = True,
            init_images: Callable | None = None) -> Evaluation:
    """Prepare an evaluation. resolve_config(cfg, explicit) -> (cfg, deviations) checks and resolves the
    options without touching the data (a None data field = the embedded world and its preset);
    trunk: "frozen" (on the device, eval mode, no gradients) or "trainable" (on the CPU, train mode: the
    task builds its model and moves it); load_model(path, device) -> (model, info) for --model
    (cfg.model). Then the checkpoint is validated, the default world written when a data field is
    None, and the preset line printed (when progress). Fine-tuning (trunk "trainable", a cfg with `init`):
    init_images(cfg) -> the training set's image files, which `--init` other than as-is measures
    (evaluate/initialization.py); its report is ev.init_report, in the first record's extra and printed
    (when progress)."""
    started = time.perf_counter()
    cfg, deviations = resolve_config(cfg, explicit)
    device = resolve_device(cfg.device)
    if hasattr(cfg, "seed"):  # (the SVMs draw no random numbers and have none)
        import torch

        torch.manual_seed(cfg.seed)
    loaded, model = None, None
    if getattr(cfg, "model", None):  # evaluation only: a model a previous run of this task trained
        model, info = load_model(cfg.model, device)
        checkpoint = info["path"]
    else:
        if not cfg.ckpt:
            raise ValueError(f"{kind}: no checkpoint given (--ckpt)")
        loaded, info = load_trunk(cfg.ckpt, device if trunk == "frozen" else "cpu", frozen=trunk == "frozen")
        checkpoint = cfg.ckpt
        if trunk == "trainable" and hasattr(cfg, "init"):
            from cpfs_bench.evaluate.initialization import check_init

            check_init(cfg.init, info["arch"], getattr(cfg, "bn_mode", "eval"), checkpoint)
    embedded = [f for f in data_fields if getattr(cfg, f) is None]
    if embedded:  # only now: a bad checkpoint must not first cost the world's minutes
        world = str(default_world(progress=progress))
        cfg = replace(cfg, **{f: world for f in embedded})
    if progress:
        print(preset_line(kind, deviations, bool(embedded)), file=sys.stderr, flush=True)
    init_report = None
    if loaded is not None and trunk == "trainable" and getattr(cfg, "init", "as-is") != "as-is":
        from cpfs_bench.evaluate.initialization import initialize_trunk

        init_report = initialize_trunk(loaded, cfg.init, init_images(cfg), info["mean"], info["std"],
                                       cfg.init_images, cfg.seed)
        if progress:
            print(init_line(init_report), file=sys.stderr, flush=True)
    run_name = getattr(cfg, "name", None) or default_run_name(checkpoint)
    method = getattr(cfg, "method", None) or default_method_name(info, checkpoint)
    out = None
    if folder:
        if getattr(cfg, "out", None):
            out = Path(cfg.out)
        elif model is not None:
            out = Path(cfg.model).parent
        else:
            out = evaluation_folder(kind, run_name, info["sha256"])
        if model is not None:
            out.mkdir(parents=True, exist_ok=True)
        if "out" in dataclass_defaults(cfg):
            cfg = replace(cfg, out=str(out))
    return Evaluation(kind=kind, task=task, protocol=protocol, cfg=cfg, deviations=deviations, device=device,
                      info=info, checkpoint=checkpoint, run_name=run_name, method=method, out=out, trunk=loaded,
                      model=model, started=started, init_report=init_report)
