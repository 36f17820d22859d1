"""Results: the one record format, the store, and the paper's Tables 1 and 2 with our numbers.

Every reported number is one record, one JSON object per line of a JSON-lines file (the default
store is `$CPFS_BENCH_HOME/results/records.jsonl`, see `results.store.default_store`). Evaluation
code builds records with `results.store.make_record` and writes them with
`results.store.append_records` (atomic, safe for concurrent writers); `read_records` reads them
back. Fields of a record (record_version 2; version-1 records lack run, checkpoint_step and
dataset_info and are still read), in this order:

    record_version     int, 1; readers refuse records newer than they know
    task               str, what was evaluated: "voc07_cls", "voc07_det", "voc12_seg",
                       "imagenet_linear", "voc07_svm", ...
    metric             str: "mAP", "mIoU", "top1", ...
    value              float, in percent, 0..100 (finite)
    unit               "percent"
    layer              str or null: the probed layer ("conv1".."conv5") for per-layer evaluations;
                       null for whole-network ones (Table 1's fine-tuning)
    method             str, the method: "CPFS-KTA", "CPFS-CE", "random", "random-rescaled",
                       "supervised", ...
    run                str, the evaluated run (a table row of its own): `--name`, default the run
                       folder of the checkpoint (e.g. "pretrain-kta") or the file's stem
    protocol           str, the name of the published protocol followed (e.g. "krahenbuhl16-voc07-cls")
    deviations         object: every setting that differs from the protocol ({} if none),
                       e.g. {"iters": 1000}
    checkpoint         str or null: absolute path of the evaluated checkpoint
    checkpoint_sha256  str or null: hex SHA-256 of that file (null without a checkpoint)
    checkpoint_step    int or null: the training step of that checkpoint (null when unknown)
    dataset            str or null: the dataset path (absolute when it exists) or name
    dataset_info       object: what the dataset is, {"name", "classes", "split", "images", "embedded"};
                       part of a cell's identity (see results.tables)
    split              str or null: e.g. "test", "val"
    git_commit         str or null: HEAD of the cpfs-bench git checkout the code ran from
                       (null when not a git checkout or git is missing)
    time               str: UTC ISO 8601 time the record was made ("2025-01-31T12:00:00.000000+00:00")
    host               str: platform.node()
    extra              object: anything else worth keeping ({} if nothing), e.g. {"supervision": ...}

Tables (`results.tables`): `build_table(records, 1|2)` and `render(records, table, fmt)` with fmt in
"table", "md", "latex", "csv"; the published numbers live in `paper_tables.csv` (package data).
Each of our cells is shown as "65.3 [a]", the letter keyed to a protocol legend under the table.
Plots (`results.plots`): `plot_linear_probes(records, png_path)`.
"""
