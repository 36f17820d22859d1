"""results/: the record format and store, the paper tables, rendering, and the probe plot."""
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from cpfs_bench.results import store
from cpfs_bench.results.plots import plot_linear_probes
from cpfs_bench.results.store import (
    FIELDS,
    RECORD_VERSION,
    append_records,
    default_store,
    make_record,
    read_records,
    sha256_file,
)
from cpfs_bench.results.tables import build_table, latex_escape, load_paper_tables, render

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def at(rec, minutes):
    """The record with its time set to T0 + minutes."""
    return {**rec, "time": (T0 + timedelta(minutes=minutes)).isoformat()}


# ------------------------------------------------------------------------------------------ records

def test_make_record_fields_and_checkpoint_sha256(tmp_path):
    ckpt = tmp_path / "last.pt"
    payload = os.urandom(2_500_000)  # more than one read chunk
    ckpt.write_bytes(payload)
    before = datetime.now(timezone.utc)
    rec = make_record("imagenet_linear", "top1", 29.25, method="CPFS-KTA", protocol="zhang17-linear-probe",
                      layer="conv3", deviations={"epochs": 2, "pool": "avg"}, checkpoint=ckpt,
                      dataset=tmp_path, split="val", extra={"seed": 3})
    assert tuple(rec) == FIELDS
    assert rec["record_version"] == RECORD_VERSION == 2 and rec["run"] == "CPFS-KTA"
    assert (rec["task"], rec["metric"], rec["value"], rec["unit"]) == ("imagenet_linear", "top1", 29.25, "percent")
    assert (rec["layer"], rec["method"], rec["protocol"]) == ("conv3", "CPFS-KTA", "zhang17-linear-probe")
    assert rec["deviations"] == {"epochs": 2, "pool": "avg"} and rec["extra"] == {"seed": 3}
    assert rec["checkpoint"] == str(ckpt.resolve())
    assert rec["checkpoint_sha256"] == hashlib.sha256(payload).hexdigest() == sha256_file(ckpt)
    assert rec["dataset"] == str(tmp_path.resolve()) and rec["split"] == "val"
    t = datetime.fromisoformat(rec["time"])
    assert t.utcoffset() == timedelta(0) and before <= t <= datetime.now(timezone.utc)
    assert rec["host"] and isinstance(rec["host"], str)
    assert rec["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", rec["git_commit"])
    assert json.loads(json.dumps(rec)) == rec  # plain JSON through and through


def test_make_record_defaults():
    rec = make_record("voc07_cls", "mAP", 50, method="random", protocol="krahenbuhl16-voc07-cls")
    assert rec["value"] == 50.0 and isinstance(rec["value"], float)
    assert rec["deviations"] == {} and rec["extra"] == {}
    assert rec["layer"] is rec["checkpoint"] is rec["checkpoint_sha256"] is rec["dataset"] is rec["split"] is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(value=math.nan), "finite"),
    (dict(value=math.inf), "finite"),
    (dict(value=-0.5), r"\[0, 100\]"),
    (dict(value=100.5), r"\[0, 100\]"),
    (dict(value="65.3"), "real number"),
    (dict(value=True), "real number"),
    (dict(task=""), "task"),
    (dict(metric=" "), "metric"),
    (dict(method=""), "method"),
    (dict(protocol=""), "protocol"),
    (dict(protocol=None), "protocol"),
    (dict(layer=""), "layer"),
    (dict(deviations={"lr": object()}), "deviations"),
    (dict(deviations={"lr": math.nan}), "deviations"),
    (dict(deviations=["iters"]), "deviations"),
    (dict(extra={1: "x"}), "extra"),
])
def test_make_record_validation(kwargs, message):
    args = dict(task="voc07_cls", metric="mAP", value=60.0, method="CPFS-KTA", protocol="p")
    args.update(kwargs)
    task, metric, value = args.pop("task"), args.pop("metric"), args.pop("value")
    with pytest.raises(ValueError, match=message):
        make_record(task, metric, value, **args)


def test_make_record_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        make_record("voc07_cls", "mAP", 60.0, method="m", protocol="p", checkpoint=tmp_path / "nope.pt")


def test_git_commit_is_none_outside_a_checkout_or_without_git(tmp_path, monkeypatch):
    assert store._git_commit_of(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git here
    assert store._git_commit_of(Path(store.__file__).resolve().parent) is None


def test_default_store(monkeypatch, tmp_path):
    monkeypatch.setenv("CPFS_BENCH_HOME", str(tmp_path / "home"))
    assert default_store() == tmp_path / "home" / "results" / "records.jsonl"
    monkeypatch.delenv("CPFS_BENCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_store() == tmp_path / "xdg" / "cpfs-bench" / "results" / "records.jsonl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_store() == Path.home() / ".cache" / "cpfs-bench" / "results" / "records.jsonl"


# -------------------------------------------------------------------------------------------- store

def _append_many(path, proc, n):
    """Child process: append n records one call at a time; lines vary in size, some beyond PIPE_BUF."""
    for i in range(n):
        rec = make_record("voc07_svm", "mAP", (proc * n + i) % 100, method=f"proc{proc}", protocol="p",
                          layer="conv1", extra={"proc": proc, "i": i, "pad": "x" * ((i % 5) * 2000)})
        append_records(path, [rec])


def test_concurrent_appends_lose_nothing(tmp_path):
    path = tmp_path / "deep" / "records.jsonl"
    nproc, n = 4, 200
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, p, n)) for p in range(nproc)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    records = read_records(path)
    assert len(records) == nproc * n
    pairs = [(r["extra"]["proc"], r["extra"]["i"]) for r in records]
    assert sorted(pairs) == [(p, i) for p in range(nproc) for i in range(n)]
    assert all(r["extra"]["pad"] == "x" * ((r["extra"]["i"] % 5) * 2000) for r in records)
    assert len(path.read_bytes().splitlines()) == nproc * n


def test_append_is_all_or_nothing_and_closes_a_torn_line(tmp_path):
    path = tmp_path / "a" / "b" / "records.jsonl"
    good = make_record("voc07_cls", "mAP", 60.0, method="m", protocol="p")
    assert append_records(path, [good, good]) == 2
    before = path.read_bytes()
    with pytest.raises(ValueError, match="record 1"):
        append_records(path, [good, {"value": object()}])
    assert path.read_bytes() == before  # nothing of the failed batch was written
    assert append_records(path, []) == 0 and path.read_bytes() == before

    with open(path, "ab") as f:  # a writer died mid-line
        f.write(b'{"record_version": 1, "task": "vo')
    append_records(path, [good])
    lines = path.read_bytes().splitlines()
    assert len(lines) == 4 and json.loads(lines[3]) == good
    with pytest.raises(ValueError, match=re.escape(f"{path}:3:")):
        read_records(path)


def test_read_records_names_file_and_line(tmp_path):
    path = tmp_path / "records.jsonl"
    good = json.dumps(make_record("voc07_cls", "mAP", 60.0, method="m", protocol="p"))
    path.write_text(f"{good}\n\n   \n{good}\n")
    assert len(read_records(path)) == 2  # blank lines skipped
    path.write_text(f"{good}\n\n{good}\n{{not json\n{good}\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:4: malformed record")):
        read_records(path)
    path.write_text(f"{good}\n[1, 2]\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2:") + ".*not an object"):
        read_records(path)
    path.write_text(json.dumps({**json.loads(good), "record_version": 99}) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:1:") + ".*newer"):
        read_records(path)


# ------------------------------------------------------------------------------------- paper table

def test_paper_tables_csv():
    df = load_paper_tables()
    assert list(df.columns) == ["table", "block", "method", "supervision", "ref", "column", "value"]

    def cell(table, method, column, supervision=None):
        sel = df[(df.table == table) & (df.method == method) & (df.column == column)]
        if supervision:
            sel = sel[sel.supervision == supervision]
        return list(sel.value)

    assert cell(1, "CPFS-KTA", "Cls.") == [65.3]
    assert cell(1, "Krizhevsky et al. [30]", "Seg.") == [48.0]
    assert cell(1, "Random", "Det.") == [43.4]
    assert cell(1, "Pathak et al. [42]", "Cls.") == [61.0]
    assert cell(1, "Jayaraman et al. [26]", "Cls.") == []  # "-" in the paper
    assert cell(1, "Other Cues - State of the art", "Det.") == [55.5]
    assert cell(2, "Random", "conv1") == [11.6]
    assert cell(2, "CPFS-CE", "conv4") == [30.1]
    assert cell(2, "Noroozi et al. [38]", "conv5", "CC+Jigsaw++") == [32.2]
    assert cell(2, "Zhang et al. [61]", "conv3") == [35.4]

    t1 = df[df.table == 1]
    assert set(t1.column) == {"Cls.", "Det.", "Seg."}
    counts = t1.groupby("method", sort=False).size().to_dict()
    assert counts == {"Krizhevsky et al. [30]": 3, "Random": 3, "Agrawal et al. [2]": 2,
                      "Jayaraman et al. [26]": 1, "Lee et al. [32]": 2, "Misra et al. [35]": 1,
                      "Pathak et al. [42]": 2, "Wang et al. [55]": 2, "CPFS-CE": 3, "CPFS-CE-rev": 3,
                      "CPFS-KTA": 3, "Ours direct cls.": 3, "Other Cues - State of the art": 3}
    # The notes' Table 2 has 19 rows (the Noroozi et al. [38] row twice: Jigsaw++ and CC+Jigsaw++).
    t2 = df[df.table == 2]
    rows = t2.groupby(["method", "supervision"], sort=False)["column"].apply(list)
    assert len(rows) == 19
    assert all(cols == ["conv1", "conv2", "conv3", "conv4", "conv5"] for cols in rows)
    assert df.value.between(0, 100).all() and not df.duplicated(["table", "method", "supervision", "column"]).any()


# ------------------------------------------------------------------------------------------- tables

PAPER_SETS = {"voc07_cls": ("test", 20, 4952), "voc07_det": ("test", 20, 4952), "voc12_seg": ("val", 21, 736),
              "voc07_svm": ("test", 20, 4952), "imagenet_linear": ("val", 1000, 50_000)}


def on_paper_set(rec):
    """The record as measured on the paper's evaluation set of its task (real data, full split)."""
    split, classes, images = PAPER_SETS[rec["task"]]
    rec["dataset_info"] = {"name": "real", "classes": classes, "split": split, "images": images, "embedded": False}
    return rec


@pytest.fixture
def records():
    return [on_paper_set(r) for r in _records()]


def _records():
    kta = dict(method="CPFS-KTA", protocol="krahenbuhl16-voc07-cls")
    return [
        # voc07_cls for CPFS-KTA: the one made last (minute 20) wins although it comes first in the list
        at(make_record("voc07_cls", "mAP", 61.04, deviations={"iters": 1000}, **kta), 20),
        at(make_record("voc07_cls", "mAP", 58.0, **kta), 10),
        at(make_record("voc07_det", "mAP", 40.0, method="CPFS-KTA", protocol="fast_rcnn & co #1"), 5),
        at(make_record("voc12_seg", "mIoU", 30.0, method="random", protocol="fcn32s_voc12"), 1),
        # ties on time: the later one in the list wins
        at(make_record("voc12_seg", "mIoU", 31.0, method="random", protocol="fcn32s_voc12"), 1),
        # not Table 1 (a per-layer number), not in any table (voc07_svm)
        at(make_record("voc07_cls", "mAP", 99.0, method="CPFS-KTA", protocol="x", layer="conv3"), 30),
        at(make_record("voc07_svm", "mAP", 77.0, method="CPFS-KTA", protocol="goyal19", layer="conv5"), 30),
        at(make_record("imagenet_linear", "top1", 12.34, method="random", protocol="zhang17", layer="conv1"), 1),
        at(make_record("imagenet_linear", "top1", 9.5, method="random", protocol="zhang17", layer="conv2"), 1),
        at(make_record("imagenet_linear", "top1", 20.0, method="CPFS-KTA", protocol="zhang17", layer="conv3"), 1),
    ]


def text_rows(text):
    """Parse the aligned terminal table into {(source, method): {header: cell}} using the header positions."""
    lines = text.splitlines()
    h = next(i for i, line in enumerate(lines) if line.startswith("Source"))
    starts = [(m.start(), m.group()) for m in re.finditer(r"\S+", lines[h])]
    rows = {}
    for line in lines[h + 1:]:
        if not line.startswith(("paper", "ours")):
            continue
        cells = {name: line[s:(starts[k + 1][0] if k + 1 < len(starts) else None)].strip()
                 for k, (s, name) in enumerate(starts)}
        rows[(cells["Source"], cells["Method"])] = cells
    return rows


def md_rows(text):
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = lines[0].strip("| ").split(" | ")
    return {(c[0], c[2]): dict(zip(header, c)) for c in (line[2:-2].split(" | ") for line in lines[1:])}


def test_build_table_frame(records):
    df = build_table(records, 1)
    assert list(df.columns) == ["source", "block", "method", "run", "supervision", "ref", "Cls.", "Det.", "Seg."]
    assert list(df.source) == ["paper"] * 13 + ["ours"] * 2
    assert list(df[df.source == "ours"].method) == ["CPFS-KTA", "random"]
    ours = df[df.source == "ours"].set_index("method")
    assert ours.loc["CPFS-KTA", "Cls."] == 61.04  # latest by time, not last in the list
    assert ours.loc["CPFS-KTA", "Det."] == 40.0 and math.isnan(ours.loc["CPFS-KTA", "Seg."])
    assert ours.loc["random", "Seg."] == 31.0  # tie on time: the later record
    assert df.attrs["protocols"]["CPFS-KTA"]["Cls."] == {"protocol": "krahenbuhl16-voc07-cls",
                                                         "deviations": {"iters": 1000}}
    paper = df[df.source == "paper"].set_index("method")
    assert paper.loc["Other Cues - State of the art", "ref"] == "[19], [38], [36]"
    t2 = build_table(records, 2)
    assert len(t2) == 19 + 2 and list(t2.columns[-5:]) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    with pytest.raises(ValueError, match="table"):
        build_table(records, 3)
    svm = build_table(records, "svm")
    assert list(svm.source) == ["ours"] and svm.iloc[0]["conv5"] == 77.0
    with pytest.raises(ValueError, match="format"):
        render(records, 1, "html")


def test_render_terminal_table(records):
    text = render(records, 1, "table")
    assert text.startswith("Table 1: PASCAL VOC (Cls. %mAP VOC07, AP as the fine-tuning reference code computes it; Det. %mAP VOC07; Seg. %mIoU VOC12)\n")
    rows = text_rows(text)
    assert rows[("paper", "CPFS-KTA")]["Cls."] == "65.3"
    assert rows[("paper", "Jayaraman et al. [26]")]["Cls."] == "-"
    assert rows[("ours", "CPFS-KTA")]["Cls."] == "61.0 [a]"
    assert rows[("ours", "CPFS-KTA")]["Det."] == "40.0 [b]"
    assert rows[("ours", "CPFS-KTA")]["Seg."] == "-"
    assert rows[("ours", "random")]["Seg."] == "31.0 [c]"
    lines = text.splitlines()
    sep = next(i for i, line in enumerate(lines) if set(line) == {"="})
    assert lines[sep - 1].startswith("paper") and lines[sep + 1].startswith("ours")
    assert "  [a] krahenbuhl16-voc07-cls (deviations: iters=1000)" in lines
    assert "  [b] fast_rcnn & co #1" in lines and "  [c] fcn32s_voc12" in lines
    assert "99.0" not in text and "77.0" not in text and "58.0" not in text
    assert "Runs (" not in text  # hand-made records name no checkpoint to list

    t2 = render(records, 2, "table")
    assert t2.startswith("Table 2: ImageNet linear probes, top-1 % per layer\n")
    rows = text_rows(t2)
    assert rows[("paper", "Random")]["conv1"] == "11.6"
    assert rows[("ours", "random")]["conv1"] == "12.3 [a]" and rows[("ours", "random")]["conv2"] == "9.5 [a]"
    assert rows[("ours", "CPFS-KTA")]["conv3"] == "20.0 [a]" and rows[("ours", "CPFS-KTA")]["conv1"] == "-"
    assert "  [a] zhang17" in t2.splitlines()


def test_render_markdown(records):
    text = render(records, 1, "md")
    assert text.splitlines()[0] == "**Table 1: PASCAL VOC (Cls. %mAP VOC07, AP as the fine-tuning reference code computes it; Det. %mAP VOC07; Seg. %mIoU VOC12)**"
    rows = md_rows(text)
    assert rows[("paper", "CPFS-KTA")]["Cls."] == "65.3"
    assert rows[("ours", "CPFS-KTA")]["Cls."] == "61.0 [a]"
    assert rows[("ours", "random")]["Det."] == "-"
    assert "- [a] krahenbuhl16-voc07-cls (deviations: iters=1000)" in text.splitlines()
    rows2 = md_rows(render(records, 2, "md"))
    assert rows2[("paper", "Random")]["conv1"] == "11.6"
    assert rows2[("ours", "random")]["conv1"] == "12.3 [a]"


def test_render_latex_escapes(records):
    text = render(records, 1, "latex")
    assert latex_escape("a&b_c%d#e$f") == r"a\&b\_c\%d\#e\$f"
    assert r"\begin{tabular}{llllllrrr}" in text and r"\toprule" in text and r"\bottomrule" in text
    assert r"\textsuperscript{b} fast\_rcnn \& co \#1" in text
    assert r"\textsuperscript{c} fcn32s\_voc12" in text
    assert r"ours & cpfs-bench & CPFS-KTA & CPFS-KTA & - & - & 61.0\textsuperscript{a} & 40.0\textsuperscript{b} & - \\" in text
    assert "paper &  & CPFS-KTA & - & Optical-flow & Self & 65.3 & 50.5 & 41.5 \\\\" in text
    body = [line for line in text.splitlines() if not line.startswith("%")]
    # every special character is escaped; the only bare & are the column separators " & "
    for line in body:
        bare = re.sub(r"\\[&%#_$]", "", line).replace(" & ", " ")
        assert not set(bare) & set("&%#_$"), line


def test_render_csv_parses_back(records):
    text = render(records, 1, "csv")
    df = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])
    assert len(df) == 15 and (df["table"] == 1).all()
    ours = df[df.source == "ours"].set_index("method")
    assert ours.loc["CPFS-KTA", "Cls."] == pytest.approx(61.04)  # unformatted
    assert ours.loc["CPFS-KTA", "Cls. protocol"] == "krahenbuhl16-voc07-cls"
    assert json.loads(ours.loc["CPFS-KTA", "Cls. deviations"]) == {"iters": 1000}
    assert ours.loc["CPFS-KTA", "Det. protocol"] == "fast_rcnn & co #1"
    assert math.isnan(ours.loc["CPFS-KTA", "Seg."])
    paper = df[df.source == "paper"].set_index("method")
    assert paper.loc["CPFS-KTA", "Cls."] == 65.3 and math.isnan(paper.loc["Misra et al. [35]", "Cls."])
    t2 = pd.read_csv(io.StringIO(render(records, 2, "csv")))
    assert t2.set_index("method").loc["Random", "conv1"] == 11.6
    assert t2[t2.source == "ours"].set_index("method").loc["random", "conv1"] == pytest.approx(12.34)


def test_render_without_our_results():
    text = render([], 2, "table")
    assert "(no results of ours for this table)" in text and "Protocols" not in text
    assert len(pd.read_csv(io.StringIO(render([], 1, "csv")))) == 13


# --------------------------------------------------------------------------------------------- plot

def test_plot_linear_probes(records, tmp_path):
    png = plot_linear_probes(records, tmp_path / "plots" / "probes.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (900, 700) and len(data) > 10_000  # one panel: every record on the paper's set
    plot_linear_probes(records, tmp_path / "ours_only.png", include_paper=False)
    assert (tmp_path / "ours_only.png").stat().st_size > 5_000
    no_probes = [r for r in records if r["task"] != "imagenet_linear"]
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_linear_probes(no_probes, tmp_path / "x.png", include_paper=False)
    assert not (tmp_path / "x.png").exists()
    # before any probe of ours exists, the paper's curves alone are still worth a look
    assert plot_linear_probes(no_probes, tmp_path / "paper.png").stat().st_size > 5_000


def test_runs_get_rows_of_their_own_and_other_datasets_blocks_of_their_own(tmp_path):
    embedded = {"name": "embedded imagenet-seed0", "classes": 20, "split": "val", "images": 300, "embedded": True}
    recs = [on_paper_set(make_record("imagenet_linear", "top1", 30.0, method="CPFS-KTA", protocol="p", layer="conv3",
                                     run="kta-long", checkpoint_sha256="ab" * 32, checkpoint_step=5000)),
            # a later demo run of the same method must not replace the long run's cell
            at(make_record("imagenet_linear", "top1", 80.0, method="CPFS-KTA", protocol="p", layer="conv3",
                           run="kta-demo", checkpoint_step=100, dataset_info=embedded), 60),
            at(make_record("imagenet_linear", "top1", 81.0, method="random", protocol="p", layer="conv3",
                           run="random", dataset_info=embedded), 60)]
    df = build_table(recs, 2)
    ours = df[df.source == "ours"]
    assert list(ours.run) == ["kta-long", "kta-demo", "random"]
    assert ours.iloc[0]["block"] == "cpfs-bench" and ours.iloc[0]["conv3"] == 30.0
    assert "embedded imagenet-seed0" in ours.iloc[1]["block"] and "not comparable" in ours.iloc[1]["block"]
    text = render(recs, 2, "table")
    lines = text.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("--- cpfs-bench on embedded imagenet-seed0"))
    assert "kta-long" in lines[title - 1] and "30.0" in lines[title - 1]  # the paper's block first
    assert "kta-demo" in lines[title + 1] and "80.0" in lines[title + 1] and "other dataset" in lines[title + 1]
    assert "  kta-long: abababab, step 5000" in lines
    # one panel for the paper's dataset, one for the embedded world: twice as wide
    data = plot_linear_probes(recs, tmp_path / "two.png").read_bytes()
    assert struct.unpack(">II", data[16:24]) == (1800, 700)


def test_an_embedded_world_is_never_the_papers_dataset_even_at_its_size():
    from cpfs_bench.results.tables import dataset_block

    rec = on_paper_set(make_record("imagenet_linear", "top1", 30.0, method="m", protocol="p", layer="conv1"))
    assert dataset_block(rec) == "cpfs-bench"
    rec["dataset_info"]["embedded"] = True  # a synthetic world as big as ImageNet val
    assert "synthetic embedded world" in dataset_block(rec) and "not comparable" in dataset_block(rec)
    rec["dataset_info"].update(embedded=False, images=10_000)  # a real subset
    assert "not comparable" in dataset_block(rec)
