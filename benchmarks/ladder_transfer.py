"""The ladder's fine-tuning rungs at the longer settings the CI ladder tests (tests/test_world_eval.py,
`pytest -m ladder`) were reduced from: supervised and random (and any other trunk given) fine-tuned for
VOC07 classification, VOC12 segmentation and VOC07 detection on the embedded world, one table.

    python benchmarks/ladder_transfer.py --out runs/ladder-transfer \
        --trunk supervised=runs/ladder/supervised-s0/final.pt --trunk random=runs/ladder/random-s0.pt

Settings (each recorded as deviations in its records):
- voc07-cls: the embedded preset (300 iterations at lr 0.01, 1 crop), as the CI test.
- voc12-seg: the embedded preset (2,000 updates of one image at lr 1e-3 on the default world's 500 SBD train
  images): not a CI rung (~20 min a run on 2 cores; 1,000 updates did not separate CPFS-KTA from random); the
  table adds its foreground IoU (objects found) beside mIoU.
- voc07-det: first 250 trainval / 100 test images, smoke scales (300), 300 iterations; the CI test: the embedded
  preset (120 / 100 images at 227, 120 iterations at lr 2e-3).
`--inits as-is reinit-fc` fine-tunes each trunk once per `--init` (evaluate/initialization.py), always typed, so
the embedded presets' reinit-fc never replaces it (the default, reinit-fc, is theirs). Finished steps are skipped
(each run folder holds its final record), so an interrupted run continues.
About 1.5 hours for two trunks on 2 cores, one run at a time (estimated from the parts, measured separately).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CLS = dict(preset="embedded")
SEG = dict(preset="embedded")
DET = dict(preset="smoke", iters=300, train_images=250, test_images=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--trunk", action="append", required=True, metavar="NAME=CKPT",
                        help="a trunk to fine-tune; repeat (e.g. supervised=..., random=...)")
    parser.add_argument("--tasks", nargs="+", default=["cls", "seg", "det"], choices=["cls", "seg", "det"])
    parser.add_argument("--inits", nargs="+", default=["reinit-fc"], choices=["as-is", "rescale", "reinit-fc",
                                                                           "reinit-fc-rescale"],
                        help="--init of each fine-tuning (rescale needs BatchNorm on running statistics: voc07-cls "
                             "then runs with --bn-mode eval)")
    args = parser.parse_args()

    from cpfs_bench.evaluate.voc07_cls import VOCClsConfig
    from cpfs_bench.evaluate.voc07_cls import run as voc07_cls
    from cpfs_bench.evaluate.voc07_det import VOCDetConfig
    from cpfs_bench.evaluate.voc07_det import run as voc07_det
    from cpfs_bench.evaluate.voc12_seg import VOCSegConfig
    from cpfs_bench.evaluate.voc12_seg import run as voc12_seg

    args.out.mkdir(parents=True, exist_ok=True)
    store = str(args.out / "records.jsonl")
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    trunks = dict(spec.split("=", 1) for spec in args.trunk)

    rows = [(name, init) for name in trunks for init in args.inits]
    for name, init in rows:
        ckpt, row = trunks[name], name if init == "as-is" else f"{name}/{init}"
        for task in args.tasks:
            key = f"{task}/{row}"
            if key in results:
                continue
            start = time.perf_counter()
            folder = str(args.out / f"{task}-{row.replace('/', '-')}")
            init_options = {"init": init}
            if task == "cls":
                bn = {"bn_mode": "eval"} if init.endswith("rescale") else {}
                options = {**init_options, **bn}
                out = voc07_cls(VOCClsConfig(ckpt=ckpt, out=folder, store=store, **CLS, **options),
                                explicit=tuple(options))
                score = out["mAP"]["reference"]
            elif task == "seg":
                out = voc12_seg(VOCSegConfig(ckpt=ckpt, out=folder, store=store, **SEG, **init_options),
                                explicit=tuple(init_options))
                score = out["mIoU"]
                print(f"voc12-seg {row}: mIoU {score:.2f}, foreground IoU {out['foreground_IoU']:.1f}, named right "
                      f"{out['foreground_class_accuracy']:.1f}%")
            else:
                options = {**DET, **init_options}
                out = voc07_det(VOCDetConfig(ckpt=ckpt, out=folder, store=store, **options), explicit=tuple(options))
                score = out["mAP"]
            results[key] = {"score": round(float(score), 2), "minutes": round((time.perf_counter() - start) / 60, 1)}
            results_file.write_text(json.dumps(results, indent=1))

    print(f"\n{'trunk':<24} " + " ".join(f"{t:>16}" for t in args.tasks))
    metric = {"cls": "mAP", "seg": "mIoU", "det": "mAP"}
    for name, init in rows:
        row = name if init == "as-is" else f"{name}/{init}"
        cells = [f"{metric[t]} {results[f'{t}/{row}']['score']:6.2f} ({results[f'{t}/{row}']['minutes']:.0f}m)"
                 for t in args.tasks]
        print(f"{row:<24} " + " ".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
