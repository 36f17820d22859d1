"""The evaluations as data (torch-free): one table read by the command line, `bench reproduce` and the
results tables.

Adding an evaluation: its module in evaluate/ (a frozen `Config` whose defaults are the protocol,
`PRESETS`, `resolve_config`, `run(config) -> summary`, on evaluate.evaluation.prepare and, when it
trains, bench.runs.TrainingRun), one `EvaluationSpec` here, its `bench eval` command in bench/cli.py
(the shared options come from `evaluation_options`), its paper rows in results/paper_tables.csv, its
tests. Nothing else lists evaluations.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluationSpec:
    """command: `bench eval <command>` (also the run folders' prefix); module: cpfs_bench.evaluate.<module>;
    task and metric: what its main records hold; table and columns: where they stand in `bench results`
    ({column: layer or None}); data: its dataset options, in order, each "voc", "sbd" or "imagenet" (the
    option is --voc, --sbd, --data for imagenet); paper_dataset: the paper's evaluation set (split,
    classes, images), which alone shares a block with the paper's numbers; folder: whether it keeps a
    run folder (--out); summary: one line for `bench eval --help`."""

    command: str
    module: str
    task: str
    metric: str
    table: int | str
    columns: tuple[tuple[str, str | None], ...]
    data: tuple[str, ...]
    paper_dataset: tuple[str, int, int]
    summary: str
    folder: bool = True


LAYERS = tuple(f"conv{i}" for i in range(1, 6))
VOC07_TEST = ("test", 20, 4952)

EVALUATIONS = (
    EvaluationSpec("linear-probe", "linear_probe", "imagenet_linear", "top1", 2, tuple((c, c) for c in LAYERS),
                   ("imagenet",), ("val", 1000, 50_000), "ImageNet per-layer linear probes (Table 2)."),
    EvaluationSpec("voc07-svm", "voc07_svm", "voc07_svm", "mAP", "svm", tuple((c, c) for c in LAYERS), ("voc",),
                   VOC07_TEST, "VOC07 per-layer linear SVMs (Goyal et al.).", folder=False),
    EvaluationSpec("voc07-cls", "voc07_cls", "voc07_cls", "mAP", 1, (("Cls.", None),), ("voc",), VOC07_TEST,
                   "VOC07 classification fine-tuning (Table 1 Cls.)."),
    EvaluationSpec("voc07-det", "voc07_det", "voc07_det", "mAP", 1, (("Det.", None),), ("voc",), VOC07_TEST,
                   "VOC07 detection, Fast R-CNN (Table 1 Det.)."),
    EvaluationSpec("voc12-seg", "voc12_seg", "voc12_seg", "mIoU", 1, (("Seg.", None),), ("sbd", "voc"),
                   ("val", 21, 736), "VOC12 segmentation, FCN-32s (Table 1 Seg.)."),
)
BY_COMMAND = {spec.command: spec for spec in EVALUATIONS}
DATA_OPTIONS = {"voc": "--voc", "sbd": "--sbd", "imagenet": "--data"}


def table_columns() -> dict:
    """{table: {column: (task, metric, layer)}} in the order tables print them (Table 1's columns in the
    paper's order Cls., Det., Seg.)."""
    columns: dict = {}
    for spec in EVALUATIONS:
        for column, layer in spec.columns:
            columns.setdefault(spec.table, {})[column] = (spec.task, spec.metric, layer)
    order = {"Cls.": 0, "Det.": 1, "Seg.": 2}
    columns[1] = dict(sorted(columns[1].items(), key=lambda kv: order[kv[0]]))
    return {t: columns[t] for t in (1, 2, "svm")}
