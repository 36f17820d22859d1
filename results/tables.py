"""The paper's Tables 1 and 2 (and the VOC07 SVM table) with our numbers underneath, as terminal
text, Markdown, LaTeX or CSV.

Rows: the paper's published rows first (`source` "paper", with its block, method, supervision and
[ref]), then ours (`source` "ours"), one row per (dataset block, run, method), in the order in which
each first appears in the records. Our rows measured on the paper's evaluation set (PAPER_DATASETS,
from the record's dataset_info) form block "cpfs-bench"; every other dataset (the embedded world, a
subset) forms a block of its own, titled with the dataset and "not comparable with the published
rows", after it. When several records exist for the same (block, run, method, task, metric, layer),
the latest by `time` wins (ties: the later one in the list).

Which records fill which column:

    Table 1  "Cls."  voc07_cls  mAP   layer None (whole-network fine-tuning)
             "Det."  voc07_det  mAP   layer None
             "Seg."  voc12_seg  mIoU  layer None
    Table 2  "conv1".."conv5"   imagenet_linear  top1  layer "conv1".."conv5"
    "svm"    "conv1".."conv5"   voc07_svm  mAP  layer "conv1".."conv5" (no paper rows)

Under the protocol legend, a run legend names each run's checkpoint (sha256 prefix, step, path).

Protocol convention: every one of our cells carries a letter in square brackets, "65.3 [a]"; a legend
under the table maps each letter to a protocol name plus its deviations, e.g.
"[a] krahenbuhl16-voc07-cls (deviations: iters=1000)". Letters are given to distinct (protocol,
deviations) pairs in reading order (our rows top to bottom, columns left to right): a..z, aa, ab, ...
Paper cells never carry a letter, so a bracketed letter always means "measured here, under that
protocol"; the paper's citations stay in the Ref column as numbers ("[61]"). In LaTeX the letter is
a superscript ("65.3\\textsuperscript{a}") and the legend follows \\bottomrule.

Formats (`render(records, table, fmt)`):

    table  aligned plain text: title line, header, dashed rule, paper rows, a "=" rule, our rows, legend
    md     GitHub Markdown: bold title line, a pipe table (numbers right-aligned), legend as a list
    latex  title as a "%" comment line, then a booktabs tabular (\\midrule between blocks and before
           ours), legend rows after \\bottomrule; special characters (& % $ # _ { } ~ ^ \\ < > |) escaped
    csv    wide, one line per row, no title: table, source, block, method, supervision, ref, the value
           columns (unformatted floats, empty when missing), then "<column> protocol" and
           "<column> deviations" (JSON object) for each value column, filled for our cells only

Numbers are shown with one decimal; a missing cell shows "-" (empty in CSV). A block name is shown
on the first row of its block only (like the paper's merged cells), except in CSV.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Iterable, Mapping

import pandas as pd

from cpfs_bench.bench.registry import EVALUATIONS, table_columns

FORMATS = ("table", "md", "latex", "csv")
TEXT_COLUMNS = ("source", "block", "method", "run", "supervision", "ref")
HEADERS = {"source": "Source", "block": "Block", "method": "Method", "run": "Run", "supervision": "Supervision",
           "ref": "Ref"}
OURS_BLOCK = "cpfs-bench"

TABLES = (1, 2, "svm")
TITLES = {
    1: "Table 1: PASCAL VOC (Cls. %mAP VOC07, AP as the fine-tuning reference code computes it; Det. %mAP VOC07; Seg. %mIoU VOC12)",
    2: "Table 2: ImageNet linear probes, top-1 % per layer",
    "svm": "VOC07 linear SVMs per layer (Goyal et al. 2019), test %mAP (not in the paper)",
}
#: table -> {column: (task, metric, layer)}, from the one table of evaluations (bench/registry.py)
COLUMNS: dict = table_columns()
#: the evaluation sets of the paper's numbers: (split, classes, images). A cell of ours sits in the
#: paper's block only when its dataset_info matches; anything else (the embedded world, a subset)
#: gets a block of its own, titled with its dataset.
PAPER_DATASETS = {spec.task: spec.paper_dataset for spec in EVALUATIONS}


def load_paper_tables() -> pd.DataFrame:
    """The paper's published numbers (results/paper_tables.csv), long format, one row per cell:
    table (int), block, method, supervision, ref, column, value (percent)."""
    with resources.files("cpfs_bench.results").joinpath("paper_tables.csv").open("r", encoding="utf-8") as f:
        df = pd.read_csv(f, keep_default_na=False, na_values=[], dtype={"table": int, "value": float})
    return df


def _check_table(table) -> None:
    if table not in COLUMNS:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")


def dataset_block(rec: Mapping) -> str:
    """The block of our rows a record belongs in: OURS_BLOCK when it was measured on the paper's
    evaluation set, else a title naming its dataset."""
    info = rec.get("dataset_info") or {}
    if not info:
        return f"{OURS_BLOCK}: dataset not recorded ({rec.get('dataset') or 'unknown'}); not comparable with the published rows"
    if (info.get("split"), info.get("classes"), info.get("images")) == PAPER_DATASETS.get(rec["task"]) \
            and not info.get("embedded"):
        return OURS_BLOCK
    kind = "synthetic embedded world, " if info.get("embedded") else ""
    return (f"{OURS_BLOCK} on {info.get('name')} ({kind}{info.get('classes')} classes, {info.get('split')}, "
            f"{info.get('images')} images): not comparable with the published rows")


def _record_time(rec: Mapping, i: int) -> datetime:
    t = rec.get("time")
    try:
        dt = datetime.fromisoformat(t)
    except (TypeError, ValueError):
        raise ValueError(f"record {i}: time {t!r} is not an ISO 8601 timestamp") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def latest_records(records: Iterable[Mapping]) -> dict[tuple, Mapping]:
    """{(block, run, method, task, metric, layer): the latest record by time} (ties: the later one in
    the input), keys in order of first appearance. A run's cells on different datasets never replace
    each other; nor do two runs of one method."""
    best: dict[tuple, tuple[datetime, int, Mapping]] = {}
    for i, rec in enumerate(records):
        for field in ("task", "metric", "value", "method", "protocol"):
            if field not in rec:
                raise ValueError(f"record {i}: missing field {field!r}")
        key = (dataset_block(rec), rec.get("run") or rec["method"], rec["method"], rec["task"], rec["metric"],
               rec.get("layer"))
        stamp = (_record_time(rec, i), i)
        if key not in best or stamp >= best[key][:2]:
            best[key] = (*stamp, rec)
    return {k: v[2] for k, v in best.items()}


def build_table(records: Iterable[Mapping], table: int) -> pd.DataFrame:
    """Table 1 or 2 as a DataFrame: columns source, block, method, supervision, ref, then the value
    columns (float percent, NaN when missing); the paper's rows first, then ours.

    Alongside the numbers, `df.attrs` holds: "table", "title", "value_columns", and "protocols":
    {our run: {column: {"protocol": name, "deviations": {...}}}} for every one of our cells, and
    "checkpoints": {our run: {(sha256, step): path}}. Our rows: one per (dataset block, run, method).
    """
    _check_table(table)
    columns = COLUMNS[table]
    rows: list[dict[str, Any]] = []

    paper = load_paper_tables()
    paper = paper[paper["table"] == table]
    for (block, method, supervision), cells in paper.groupby(["block", "method", "supervision"], sort=False,
                                                             dropna=False):
        refs = list(dict.fromkeys(cells["ref"]))
        row = {"source": "paper", "block": block, "method": method, "supervision": supervision,
               "ref": ", ".join(refs), **{c: math.nan for c in columns}}
        for col, value in zip(cells["column"], cells["value"]):
            if col not in columns:
                raise ValueError(f"paper_tables.csv: unknown column {col!r} for table {table}")
            row[col] = float(value)
        rows.append(row)

    wanted = {key: col for col, key in columns.items()}
    ours: dict[tuple, dict[str, Any]] = {}
    protocols: dict[str, dict[str, dict]] = {}
    checkpoints: dict[str, dict] = {}
    for (block, run, method, task, metric, layer), rec in latest_records(records).items():
        col = wanted.get((task, metric, layer))
        if col is None:
            continue
        row = ours.setdefault((block, run, method), {"source": "ours", "block": block, "method": method, "run": run,
                                                     "supervision": None, "ref": None, **{c: math.nan for c in columns}})
        row[col] = float(rec["value"])
        supervision = (rec.get("extra") or {}).get("supervision")
        if isinstance(supervision, str) and supervision:
            row["supervision"] = supervision
        protocols.setdefault(run, {})[col] = {"protocol": rec["protocol"], "deviations": dict(rec.get("deviations") or {})}
        sha = rec.get("checkpoint_sha256")
        checkpoints.setdefault(run, {})[(sha, rec.get("checkpoint_step"))] = rec.get("checkpoint")
    # the paper's datasets first, then one block per other dataset, in order of first appearance
    rows.extend(sorted(ours.values(), key=lambda r: r["block"] != OURS_BLOCK))

    df = pd.DataFrame(rows, columns=[*TEXT_COLUMNS, *columns])
    df[list(columns)] = df[list(columns)].astype(float)
    df.attrs.update(table=table, title=TITLES[table], value_columns=list(columns), protocols=protocols,
                    checkpoints=checkpoints)
    return df


# ---------------------------------------------------------------------------------------------------
# the protocol legend

def _letters(n: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa, ..."""
    s = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        s = chr(ord("a") + r) + s
    return s


def _dev_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def describe_protocol(protocol: str, deviations: Mapping[str, Any] | None) -> str:
    """"name" or "name (deviations: k=v, k2=v2)"."""
    if not deviations:
        return protocol
    return f"{protocol} (deviations: {', '.join(f'{k}={_dev_value(v)}' for k, v in deviations.items())})"


def protocol_legend(df: pd.DataFrame) -> tuple[dict[tuple[str, str], str], list[tuple[str, str]]]:
    """({(our run, column): letter}, [(letter, protocol description)]) for a `build_table` frame."""
    protocols = df.attrs.get("protocols", {})
    marks: dict[tuple[str, str], str] = {}
    letter_of: dict[tuple[str, str], str] = {}
    legend: list[tuple[str, str]] = []
    for run in df.loc[df["source"] == "ours", "run"]:
        for col in df.attrs["value_columns"]:
            cell = protocols.get(run, {}).get(col)
            if cell is None:
                continue
            key = (cell["protocol"], json.dumps(cell["deviations"], sort_keys=True))
            if key not in letter_of:
                letter_of[key] = _letters(len(letter_of))
                legend.append((letter_of[key], describe_protocol(cell["protocol"], cell["deviations"])))
            marks[(run, col)] = letter_of[key]
    return marks, legend


# ---------------------------------------------------------------------------------------------------
# renderers

def _text(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v == "":
        return "-"
    return str(v)


def _number(v: float) -> str | None:
    return None if v is None or math.isnan(v) else f"{v:.1f}"


def _display_rows(df: pd.DataFrame, short_blocks: bool = False):
    """Yield (source, [text cells], [(number or None, letter or None)]) with repeated block names blanked.
    Before the first row of each block of ours on another dataset than the paper's, yield
    ("title", block title, None); with short_blocks its rows show "other dataset" as their block."""
    marks, _ = protocol_legend(df)
    cols = df.attrs["value_columns"]
    prev = None
    for rec in df.to_dict("records"):
        block_key = (rec["source"], rec["block"])
        other = rec["source"] == "ours" and rec["block"] != OURS_BLOCK
        if other and block_key != prev:
            yield "title", rec["block"], None
        texts = [_text(rec[c]) for c in TEXT_COLUMNS]
        if other and short_blocks:
            texts[1] = "other dataset"
        if block_key == prev:
            texts[1] = ""
        prev = block_key
        values = [(_number(rec[c]), marks.get((rec["run"], c)) if rec["source"] == "ours" else None)
                  for c in cols]
        yield rec["source"], texts, values


def _render_text(df: pd.DataFrame) -> str:
    cols = df.attrs["value_columns"]
    rows = list(_display_rows(df, short_blocks=True))
    numw = [max([len(v[i][0]) for s, _, v in rows if s != "title" and v[i][0]] + [1]) for i in range(len(cols))]
    header = [HEADERS[c] for c in TEXT_COLUMNS] + list(cols)
    body = []
    for source, texts, values in rows:
        if source == "title":
            body.append((source, texts))
            continue
        cells = list(texts)
        for i, (num, mark) in enumerate(values):
            cells.append((num or "-").rjust(numw[i]) + (f" [{mark}]" if mark else ""))
        body.append((source, cells))
    widths = [max(len(r[i]) for r in [header] + [c for s, c in body if s != "title"]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    total = sum(widths) + 2 * (len(widths) - 1)
    out = [df.attrs["title"], line(header), "-" * total]
    out += [line(c) for s, c in body if s == "paper"]
    out.append("=" * total)
    ours = [f"--- {c} ---" if s == "title" else line(c) for s, c in body if s != "paper"]
    out += ours or ["(no results of ours for this table)"]
    out += _legend_lines(df, "  ")
    return "\n".join(out) + "\n"


def _legend_lines(df: pd.DataFrame, bullet: str) -> list[str]:
    _, legend = protocol_legend(df)
    if not legend:
        return []
    lines = ["", "Protocols of our cells (the [letter] after a number):"] + [f"{bullet}[{k}] {d}" for k, d in legend]
    runs = {run: {k: v for k, v in ckpts.items() if k[0] or v} for run, ckpts in df.attrs.get("checkpoints", {}).items()}
    runs = {run: ckpts for run, ckpts in runs.items() if ckpts}
    if runs:
        lines += ["", "Runs (the checkpoint each row evaluated):"]
        for run, ckpts in runs.items():
            for (sha, step), path in ckpts.items():
                lines.append(f"{bullet}{run}: {(sha or 'no sha256')[:8]}"
                             + (f", step {step}" if step is not None else "") + (f", {path}" if path else ""))
    return lines


def _md_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|")


def _render_md(df: pd.DataFrame) -> str:
    cols = df.attrs["value_columns"]
    header = [HEADERS[c] for c in TEXT_COLUMNS] + list(cols)
    out = [f"**{_md_escape(df.attrs['title'])}**", "",
           "| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] * len(TEXT_COLUMNS) + ["---:"] * len(cols)) + "|"]
    any_ours = False
    for source, texts, values in _display_rows(df):
        if source == "title":  # the block column of the block's first row names it
            continue
        any_ours |= source == "ours"
        cells = [_md_escape(t) for t in texts]
        cells += [(num or "-") + (f" [{mark}]" if mark else "") for num, mark in values]
        out.append("| " + " | ".join(cells) + " |")
    if not any_ours:
        out += ["", "(no results of ours for this table)"]
    out += _legend_lines(df, "- ")
    return "\n".join(out) + "\n"


_LATEX_SPECIAL = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
    ">": r"\textgreater{}", "|": r"\textbar{}",
})


def latex_escape(s: str) -> str:
    """Escape LaTeX special characters in plain text."""
    return str(s).translate(_LATEX_SPECIAL)


def _render_latex(df: pd.DataFrame) -> str:
    cols = df.attrs["value_columns"]
    ncols = len(TEXT_COLUMNS) + len(cols)
    header = [HEADERS[c] for c in TEXT_COLUMNS] + list(cols)
    out = [f"% {df.attrs['title']}",
           "\\begin{tabular}{" + "l" * len(TEXT_COLUMNS) + "r" * len(cols) + "}",
           "\\toprule",
           " & ".join(latex_escape(h) for h in header) + " \\\\",
           "\\midrule"]
    first = True
    for source, texts, values in _display_rows(df, short_blocks=True):
        if source == "title":
            out += ["\\midrule", f"\\multicolumn{{{ncols}}}{{l}}{{\\emph{{{latex_escape(texts)}}}}} \\\\"]
            first = True  # the rule is drawn
            continue
        if texts[1] and not first:  # a new block starts
            out.append("\\midrule")
        first = False
        cells = [latex_escape(t) for t in texts]
        cells += [(num or "-") + (f"\\textsuperscript{{{mark}}}" if mark else "") for num, mark in values]
        out.append(" & ".join(cells) + " \\\\")
    out.append("\\bottomrule")
    _, legend = protocol_legend(df)
    for k, d in legend:
        out.append(f"\\multicolumn{{{ncols}}}{{l}}{{\\footnotesize \\textsuperscript{{{k}}} "
                   f"{latex_escape(d)}}} \\\\")
    out.append("\\end{tabular}")
    return "\n".join(out) + "\n"


def _render_csv(df: pd.DataFrame) -> str:
    cols = df.attrs["value_columns"]
    protocols = df.attrs.get("protocols", {})
    out = df.copy()
    out.insert(0, "table", df.attrs["table"])
    for suffix, get in (("protocol", lambda cell: cell["protocol"]),
                        ("deviations", lambda cell: json.dumps(cell["deviations"], sort_keys=True))):
        for c in cols:
            out[f"{c} {suffix}"] = [
                get(protocols[r][c]) if s == "ours" and c in protocols.get(r, {}) else ""
                for s, r in zip(df["source"], df["run"])]
    return out.to_csv(index=False, lineterminator="\n")


_RENDERERS = {"table": _render_text, "md": _render_md, "latex": _render_latex, "csv": _render_csv}


def format_table(df: pd.DataFrame, fmt: str) -> str:
    """Render a `build_table` frame in one of FORMATS."""
    if fmt not in _RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return _RENDERERS[fmt](df)


def render(records: Iterable[Mapping], table, fmt: str) -> str:
    """Table 1, 2 or "svm" (paper rows, then ours) as text in `fmt`: "table", "md", "latex" or "csv"."""
    if fmt not in _RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return format_table(build_table(records, table), fmt)
