"""The book's tables and figures, from fabricated run directories (nothing is trained)."""

import importlib.util
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from reproresnet import architectures, recipes, records, reference
from reproresnet.book import render, report

ROOT = Path(__file__).resolve().parent.parent


def make_run(results, name, *, arch="preact_resnet110", label="CIFAR-10", status="complete", test_error=6.0,
             seed=0, n_train=50_000, limit_train=None, recipe="seed", epochs=200, device="NVIDIA H100",
             seconds_per_epoch=20.0, metric_rows=None, n_val=0, dataset=None):
    """A run directory as `reproresnet.train` writes it, with the fields the report reads."""
    run_dir = Path(results) / name
    run_dir.mkdir(parents=True)
    done = epochs if status == "complete" else min(2, epochs)
    final = None
    if status == "complete":
        final = {"test_error": test_error, "epoch": epochs, "selected_by": "final_epoch",
                 "seconds_per_epoch": seconds_per_epoch, "images_per_second": n_train / seconds_per_epoch}
    record = {
        "format": records.RUN_FORMAT, "status": status, "name": name, "arch": arch,
        "config": {"arch": arch, "out": str(run_dir), "recipe": recipe, "epochs": epochs, "batch_size": None,
                   "seed": seed, "dataset": dataset or ("cifar10" if label.startswith("CIFAR") else "synthetic"),
                   "limit_train": limit_train, "limit_test": None, "val_size": 0, "device": "auto"},
        "recipe": {**recipes.get_recipe(recipe).as_dict(), "length": epochs, "unit": "epoch"},
        "data": {"dataset": dataset or ("cifar10" if label.startswith("CIFAR") else "synthetic"), "label": label,
                 "n_train": n_train, "n_val": n_val, "n_test": 10_000, "normalization": "per_pixel_mean",
                 "augmentation": "per_image"},
        "device": {"type": "cuda", "name": device, "speedups": {}}, "precision": "bf16 autocast",
        "params": 1_730_522, "epochs_planned": epochs, "epochs_done": done, "final": final, "message": None,
        "started": "2026-11-27T06:00:00+00:00", "updated": f"2026-11-27T{6 + epochs // 100:02d}:30:00+00:00",
    }
    (run_dir / records.RUN_FILE).write_text(json.dumps(record))
    rows = metric_rows or [{"epoch": e, "train_loss": 2.0 / e, "test_error": test_error + 10 / e,
                            "seconds": seconds_per_epoch} for e in range(1, done + 1)]
    pd.DataFrame(rows).to_csv(run_dir / records.METRICS_FILE, index=False)
    return run_dir


def row(table, network):
    """The network's row as the book shows it (its label: `.name`, for `report.links`)."""
    rows = table[table["network"] == network]
    assert len(rows) == 1, table
    return report.shown(table).loc[rows.index[0]]


def by_network(table):
    """The table as the book shows it, indexed by network identifier."""
    return report.shown(table).set_index(table["network"])


def cells(html, tag="td"):
    """(the book's classes, inner HTML) of each `tag` cell of a rendered table."""
    return [(frozenset(classes.split()) & {"num", "text", "quoted"}, inner)
            for classes, inner in re.findall(rf'<{tag} class="([^"]*)"\s*>(.*?)</{tag}>', html, re.S)]


def test_error_table_shows_mean_std_and_n_over_two_cifar10_seeds(tmp_path):
    make_run(tmp_path, "preact_resnet110-seed0", seed=0, test_error=6.0, device="NVIDIA H100")
    make_run(tmp_path, "preact_resnet110-seed1", seed=1, test_error=7.0, device="NVIDIA H200")
    runs, problems = report.load_runs(tmp_path)
    assert problems == []
    table = report.error_table(runs)
    line = row(table, "preact_resnet110")
    assert line[report.OURS] == "6.50 ± 0.71"  # sample standard deviation
    assert line["n"] == "2"
    assert line[report.EACH_SEED] == "6.00 (seed 0), 7.00 (seed 1)"
    # every number links to its records: the mean to both, each seed's to its own
    assert report.links(table, line.name, report.OURS) == ("preact_resnet110-seed0", "preact_resnet110-seed1")
    assert report.links(table, line.name, report.EACH_SEED) == ("preact_resnet110-seed0", "preact_resnet110-seed1")
    html = report.html(table, "error-table")
    for part, name in (("6.00 (seed 0)", "preact_resnet110-seed0"), ("7.00 (seed 1)", "preact_resnet110-seed1")):
        assert f'href="../book/runs/{name}.html" title="record: {name}">{part}</a>' in html
    assert line[report.PAPER] == "6.37" and line[report.SEED] == "6.38"
    assert report.OURS.endswith("mean ± std") and report.SEED.endswith("single run")
    compute = row(report.compute_table(runs), "preact_resnet110")
    assert compute["epochs"] == "200"
    assert "NVIDIA H100" in compute["our device"] and "NVIDIA H200" in compute["our device"]
    # The seed recipe on all 50,000 images: its recipe differs from He et al.'s, its data does not.
    notes = [table.attrs["notes"][int(n) - 1] for n in line[report.NOTES].split(", ")]
    assert any("recipe 'seed'" in note and "batch 64 instead of 128" in note for note in notes)
    assert not any("data:" in note for note in notes)


def test_one_run_shows_its_error_without_a_spread(tmp_path):
    make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", test_error=5.123)
    line = row(report.error_table(report.load_runs(tmp_path)[0]), "wrn_16_4")
    assert line[report.OURS] == "5.12" and line["n"] == "1"


def test_network_without_runs_shows_not_run(tmp_path):
    make_run(tmp_path, "preact_resnet110-seed0")
    table = report.error_table(report.load_runs(tmp_path)[0])
    for network in ("preact_resnet164", "wrn_16_4", "resnet110", "resnet164"):
        assert row(table, network)[report.OURS] == "not run"
        assert row(table, network)["n"] == report.MISSING
    assert list(table["network"][:3]) == list(reference.REPRODUCED)


def test_empty_results_every_network_not_run(tmp_path):
    runs, problems = report.load_runs(tmp_path / "does-not-exist")
    assert runs == [] and problems == []
    table = report.error_table(runs)
    assert set(report.shown(table)[report.OURS]) == {"not run"}
    assert "not run" in report.budget_summary(runs)
    assert report.other_runs_table(runs).empty
    assert set(report.shown(report.speed_table(runs))["our s/epoch"]) == {"not measured"}


@pytest.mark.parametrize("label, limit_train, n_train", [
    ("synthetic", 1000, 1000),
    ("CIFAR-10 (JPEG mirror)", None, 50_000),
    ("CIFAR-10", 1000, 1000),  # a subset of the real thing is not the paper's experiment either
])
def test_runs_not_on_full_cifar10_never_land_in_the_cifar10_column(tmp_path, label, limit_train, n_train):
    make_run(tmp_path, "preact_resnet110-seed0", label=label, limit_train=limit_train, n_train=n_train,
             test_error=1.23)
    runs, _ = report.load_runs(tmp_path)
    errors = report.error_table(runs)
    assert row(errors, "preact_resnet110")[report.OURS] == "not run"
    assert not report.shown(errors).apply(lambda column: column.str.contains("1.23")).any().any()
    other = report.shown(report.other_runs_table(runs))
    assert list(other["run"]) == ["preact_resnet110-seed0"]
    assert other.iloc[0]["data"] == f"{label}, {n_train:,} training images"  # says why it is not counted
    assert other.iloc[0]["test error (%)"] == "1.23"
    assert "1 complete" not in report.budget_summary(runs)


def test_diverged_run_shows_where_it_diverged(tmp_path):
    make_run(tmp_path, "preact_resnet164-seed0", arch="preact_resnet164", status="diverged")
    runs, _ = report.load_runs(tmp_path)
    assert row(report.error_table(runs), "preact_resnet164")[report.OURS] == "1 run diverged after 2/200"
    other = report.shown(report.other_runs_table(runs))
    assert other.iloc[0]["status"] == "diverged after 2/200"


def test_diverged_seed_is_counted_beside_the_complete_ones(tmp_path):
    make_run(tmp_path, "preact_resnet164-seed0", arch="preact_resnet164", test_error=5.5)
    make_run(tmp_path, "preact_resnet164-seed1", arch="preact_resnet164", seed=1, status="diverged")
    line = row(report.error_table(report.load_runs(tmp_path)[0]), "preact_resnet164")
    assert line[report.OURS] == "5.50 (1 failed)" and line["n"] == "1"


def test_unfinished_cifar10_run_says_where_it_stopped_and_shows_its_last_epoch(tmp_path):
    make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", status="running",
             metric_rows=[{"epoch": 1, "train_loss": 2.0, "test_error": 50.0},
                          {"epoch": 2, "train_loss": 1.5, "test_error": 40.25}])
    runs, _ = report.load_runs(tmp_path)
    # "running" with no process holding its lock: a killed run, stopped; resumable only with its checkpoint
    assert row(report.error_table(runs), "wrn_16_4")[report.OURS] == \
        "1 run stopped at 2/200 (interrupted), checkpoint not kept"
    (tmp_path / "wrn_16_4-seed0" / records.CHECKPOINT_FILE).write_bytes(b"weights")
    assert row(report.error_table(runs), "wrn_16_4")[report.OURS] == \
        "1 run stopped at 2/200 (interrupted), resumable"
    table = report.other_runs_table(runs)
    other = report.shown(table)
    assert other.iloc[0]["test error (%)"] == "40.25 (epoch 2)"
    assert other.iloc[0]["status"] == "stopped at 2/200 (interrupted), resumable"
    # the budget stands beside the number: batch size, device and precision of the run
    assert other.iloc[0]["budget"] == "batch 64, NVIDIA H100, bf16 autocast"
    assert all(report.links(table, 0, column) == ("wrn_16_4-seed0",) for column in table.columns)  # each links the run


def test_runs_with_different_settings_are_not_averaged_together(tmp_path):
    make_run(tmp_path, "a", recipe="seed", test_error=6.0)
    make_run(tmp_path, "b", recipe="he2016", test_error=7.0, epochs=164)
    runs = report.load_runs(tmp_path)[0]
    table = report.error_table(runs)
    lines = report.shown(table)[table["network"] == "preact_resnet110"]
    assert sorted(lines[report.OURS]) == ["6.00", "7.00"]
    compute = report.compute_table(runs)
    assert sorted(report.shown(compute)[compute["network"] == "preact_resnet110"]["epochs"]) == ["164", "200"]


def test_seeds_asked_for_by_a_default_or_its_value_are_one_experiment(tmp_path):
    """The recipe's 200 epochs asked for as None (the recipe's length) or as 200, on another
    device: one experiment, as resuming either would accept the other (config.recorded_key)."""
    make_run(tmp_path, "preact_resnet110-seed0", seed=0, test_error=6.0)
    seed1 = make_run(tmp_path, "preact_resnet110-seed1", seed=1, test_error=7.0)
    record = json.loads((seed1 / records.RUN_FILE).read_text())
    record["config"].update(epochs=None, device="cpu")
    (seed1 / records.RUN_FILE).write_text(json.dumps(record))
    line = row(report.error_table(report.load_runs(tmp_path)[0]), "preact_resnet110")
    assert line[report.OURS] == "6.50 ± 0.71" and "(seed 1)" in line[report.EACH_SEED]


def test_corrupt_and_foreign_records_are_problems_and_the_rest_render(tmp_path):
    make_run(tmp_path, "preact_resnet110-seed0", test_error=6.25)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text('{"format": "reproresnet-run/1", "status": ')
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "run.json").write_text(json.dumps({"format": "someone-else/2", "status": "complete"}))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "run.json").write_text(json.dumps({"format": records.RUN_FORMAT, "status": "complete"}))
    runs, problems = report.load_runs(tmp_path)
    assert [run.name for run in runs] == ["preact_resnet110-seed0"]
    by_path = {Path(p["path"]).parent.name: p["problem"] for p in problems}
    assert set(by_path) == {"broken", "foreign", "partial"}
    assert "JSON" in by_path["broken"]
    assert "someone-else/2" in by_path["foreign"]
    assert "arch" in by_path["partial"]
    assert row(report.error_table(runs), "preact_resnet110")[report.OURS] == "6.25"
    assert list(report.problems_table(problems).columns) == ["path", "problem"]


def test_a_training_notebook_without_a_record_is_a_problem(tmp_path):
    (tmp_path / "wrn_16_4-seed0").mkdir()
    (tmp_path / "wrn_16_4-seed0" / "train.ipynb").write_text("{}")
    make_run(tmp_path, "wrn_16_4-seed1", arch="wrn_16_4")
    (tmp_path / "wrn_16_4-seed1" / "train.ipynb").write_text("{}")
    runs, problems = report.load_runs(tmp_path)
    assert [run.name for run in runs] == ["wrn_16_4-seed1"]
    assert [Path(p["path"]).parent.name for p in problems] == ["wrn_16_4-seed0"]


def gid_lines(axes, gid):
    return [line for line in axes.get_lines() if line.get_gid() == gid]


def test_plot_curves_zoom_to_the_epochs_done_and_label_coinciding_references_once(tmp_path):
    run_dir = make_run(tmp_path, "preact_resnet110-seed0", status="running", epochs=200,
                       metric_rows=[{"epoch": e, "train_loss": 2.0 / e, "train_error": 40.0 / e,
                                     "test_error": 50.0 / e} for e in (1, 2, 3)])
    record = json.loads((run_dir / records.RUN_FILE).read_text())
    record["schedule"] = {"iterations_per_epoch": 782, "milestones": [62_560, 93_840]}  # epochs 80 and 120
    (run_dir / records.RUN_FILE).write_text(json.dumps(record))
    figure = report.plot_curves(run_dir, paper_error=6.37, seed_error=6.38, paper_name="He et al. 2016")
    error_axes, loss_axes = figure.axes
    [paper] = gid_lines(error_axes, "paper_error")
    [seed] = gid_lines(error_axes, "seed_error")
    assert list(paper.get_ydata()) == [6.37, 6.37] and list(seed.get_ydata()) == [6.38, 6.38]
    # 6.37 and 6.38 are one line to the eye: one style, one label naming both
    assert paper.get_linestyle() == seed.get_linestyle() == "--" and paper.get_color() == "black"
    assert paper.get_label() == "He et al. 2016 6.37 / ReScience repr. 6.38 %" and seed.get_label().startswith("_")
    # the x axis spans the 3 epochs done and says so; the drops at 80 and 120 are not reached
    assert error_axes.get_xlim() == (0, 3) and loss_axes.get_xlim() == (0, 3)
    assert error_axes.get_xlabel() == "epoch (3 of 200 done)" and not gid_lines(error_axes, "lr_drop")
    record["schedule"]["milestones"] = [1_564, 93_840]  # a drop after epoch 2: reached, and marked there
    (run_dir / records.RUN_FILE).write_text(json.dumps(record))
    assert [line.get_xdata()[0] for line in gid_lines(report.plot_curves(run_dir).axes[0], "lr_drop")] == [2]
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == ["test error", "training error", "He et al. 2016 6.37 / ReScience repr. 6.38 %"]
    assert all(text.get_fontsize() >= report.LABEL_SIZE for text in figure.legends[0].get_texts())
    far = report.plot_curves(run_dir, paper_error=5.46, seed_error=9.0)  # apart: a label each
    assert [line.get_label() for line in far.axes[0].get_lines() if line.get_gid() in ("paper_error", "seed_error")] \
        == ["paper 5.46 %", "ReScience repr. 9.00 %"]
    assert loss_axes.get_yscale() == "log"
    figure.canvas.draw()  # the loss axis reads in plain numbers, never "9e-01" or a power of ten
    ticks = [tick.get_text() for tick in loss_axes.get_yticklabels() if tick.get_text()]
    assert len(ticks) >= 2 and all(re.fullmatch(r"\d+(\.\d+)?", tick) for tick in ticks), ticks
    title = figure._suptitle.get_text()
    assert "CIFAR-10" in title and "2 of 200 epochs" in title and "batch 64" in title
    assert title.startswith("Pre-act ResNet-110 (preact_resnet110) on")


def test_plot_curves_from_a_dataframe_without_reference(tmp_path):
    metrics = pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.0], "test_error": [50.0, 40.0]})
    figure = report.plot_curves(metrics, title="two epochs")
    assert not gid_lines(figure.axes[0], "paper_error")
    assert figure.axes[0].get_xlim() == (0, 2)
    assert figure._suptitle.get_text() == "two epochs"


def test_curves_of_a_jpeg_mirror_run_grey_the_cifar10_numbers_and_say_so(tmp_path):
    make_run(tmp_path, "preact_resnet110-mirror", label="CIFAR-10 (JPEG mirror)", dataset="folder:/mirror",
             n_train=5000, limit_train=5000, epochs=2)
    runs, _ = report.load_runs(tmp_path)
    figure = report.curves_for_network(runs, "preact_resnet110")
    assert "not a CIFAR-10 result" in figure._suptitle.get_text()
    assert "CIFAR-10 (JPEG mirror)" in figure._suptitle.get_text()
    [paper] = gid_lines(figure.axes[0], "paper_error")  # context only: grey, and said to be CIFAR-10's
    assert paper.get_color() == "0.55" and paper.get_label() == "He et al. 2016 6.37 / ReScience repr. 6.38 %, CIFAR-10"
    assert report.curves_for_network(runs, "wrn_16_4") is None


def test_synthetic_smoke_runs_are_never_plotted(tmp_path):
    make_run(tmp_path, "preact_resnet110-smoke", label="synthetic", n_train=1000, limit_train=1000, epochs=2)
    make_run(tmp_path, "wrn_16_4-smoke", arch="wrn_16_4", label="synthetic", n_train=1000, limit_train=1000,
             epochs=9)
    make_run(tmp_path, "wrn_16_4-mirror", arch="wrn_16_4", label="CIFAR-10 (JPEG mirror)", dataset="folder:/m",
             n_train=5000, limit_train=5000, epochs=3)
    runs, _ = report.load_runs(tmp_path)
    assert report.curves_for_network(runs, "preact_resnet110") is None
    figure = report.curves_for_network(runs, "wrn_16_4")  # the mirror run, although the smoke run is longer
    assert "CIFAR-10 (JPEG mirror)" in figure._suptitle.get_text() and "3 of 3 epochs" in figure._suptitle.get_text()
    smoke = report.run_figure(tmp_path / "wrn_16_4-smoke")  # its own page: no paper to hold it to
    assert not gid_lines(smoke.axes[0], "paper_error")


def test_curves_of_cifar10_runs_draw_each_seed_thin_and_their_mean_thick(tmp_path):
    make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", epochs=4, test_error=6.0)
    make_run(tmp_path, "wrn_16_4-seed1", arch="wrn_16_4", seed=1, epochs=4, test_error=8.0)
    figure = report.curves_for_network(report.load_runs(tmp_path)[0], "wrn_16_4")
    error_axes = figure.axes[0]
    assert [line.get_ydata()[0] for line in gid_lines(error_axes, "paper_error")] == [5.55]
    assert gid_lines(error_axes, "paper_error")[0].get_color() == "black"
    seeds = [line for line in error_axes.get_lines() if line.get_gid() is None]
    [mean] = gid_lines(error_axes, "mean_test_error")
    assert len(seeds) == 2 and all(line.get_linewidth() < mean.get_linewidth() for line in seeds)
    assert list(mean.get_ydata()) == pytest.approx([7.0 + 10 / e for e in range(1, 5)])


def test_error_against_size_marks_papers_seed_and_each_complete_run(tmp_path):
    make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", test_error=6.0)
    make_run(tmp_path, "wrn_16_4-seed1", arch="wrn_16_4", seed=1, test_error=6.5)
    make_run(tmp_path, "wrn_16_4-jpeg", arch="wrn_16_4", label=report.JPEG_MIRROR, dataset="folder:/m", test_error=9.0)
    make_run(tmp_path, "wrn_16_4-running", arch="wrn_16_4", seed=2, status="running", test_error=1.0)
    figure = report.plot_error_vs_size(report.load_runs(tmp_path)[0])
    by_params, by_depth = figure.axes
    [ours] = gid_lines(by_params, "ours CIFAR-10")
    assert list(ours.get_ydata()) == [6.0, 6.5] and list(ours.get_xdata()) == [2_748_890, 2_748_890]
    assert list(gid_lines(by_depth, "ours CIFAR-10")[0].get_xdata()) == [16, 16]
    [mirror] = gid_lines(by_params, f"ours {report.JPEG_MIRROR}")  # apart, and said not to be CIFAR-10
    assert list(mirror.get_ydata()) == [9.0] and "not CIFAR-10" in mirror.get_label()
    quoted = {row["network"]: row for row in reference.REFERENCE}
    for axes in (by_params, by_depth):
        papers = [(x, y) for line in gid_lines(axes, "paper_error") for x, y in zip(line.get_xdata(), line.get_ydata())]
        seeds = [(x, y) for line in gid_lines(axes, "seed_error") for x, y in zip(line.get_xdata(), line.get_ydata())]
        assert sorted(y for _, y in papers) == sorted(row["paper_error"] for row in quoted.values()
                                                      if row["paper_error"] is not None)
        assert sorted(y for _, y in seeds) == [5.41, 5.66, 6.38]
        # ResNet-110's 6.37 and the ReScience reproduction's 6.38 side by side, not on one another
        assert dict((y, x) for x, y in papers)[6.37] < dict((y, x) for x, y in seeds)[6.38]
        labels = {text.get_text(): text.get_fontsize() for text in axes.texts}
        for value in [y for _, y in papers + seeds]:  # every marker says its value, 5.66 included
            assert any(f"{value:.2f}" in label for label in labels), value
        assert "Pre-act ResNet-164 5.46" in labels and min(labels.values()) >= report.LABEL_SIZE
    assert figure.get_figwidth() <= report.FIGURE_WIDTH  # drawn at the book's width: 9 pt stays 9 pt


def bench_record(rows, device="NVIDIA H100", fmt=report.BENCH_FORMAT):
    return {"format": fmt, "device": {"type": "cuda", "name": device}, "batch_size": 128, "steps": 50,
            "rows": rows}


def with_speed(run_dir, *segments):
    """Give a fabricated run the speed segments `train` records, one per process."""
    record = json.loads((run_dir / records.RUN_FILE).read_text())
    record["speed"] = {"segments": [{"first_epoch": 1, "last_epoch": record["epochs_done"], "device": "cuda",
                                     "gpu": record["device"]["name"], "pack": 1, "precision": "bf16 autocast",
                                     **segment} for segment in segments]}
    (run_dir / records.RUN_FILE).write_text(json.dumps(record))
    return run_dir


def test_speed_table_gpu_seconds_per_epoch_from_runs_partial_ones_marked_and_gpu_benchmarks(tmp_path):
    with_speed(make_run(tmp_path, "preact_resnet110-seed0"), {"seconds_per_epoch": 20.0, "images_per_second": 2500})
    with_speed(make_run(tmp_path, "preact_resnet110-seed1", seed=1),
               {"seconds_per_epoch": 22.0, "images_per_second": 2300})
    for seed in (0, 1, 2):  # three unfinished runs packed on one GPU
        with_speed(make_run(tmp_path, f"preact_resnet110-jpeg-seed{seed}", seed=seed, status="running",
                            label=report.JPEG_MIRROR, dataset="folder:/m"),
                   {"seconds_per_epoch": 36.0 + seed, "images_per_second": 1350, "pack": 3})
    with_speed(make_run(tmp_path, "preact_resnet110-smoke", label="synthetic", n_train=1000, limit_train=1000),
               {"seconds_per_epoch": 0.5, "images_per_second": 2000})  # a small epoch says nothing
    cpu = make_run(tmp_path, "wrn_16_4-cpu", arch="wrn_16_4", device="AMD EPYC")
    with_speed(cpu, {"device": "cpu", "gpu": None, "seconds_per_epoch": 900.0, "images_per_second": 55})
    bench = [{**bench_record([{"arch": "wrn_16_4", "path": "reproresnet", "seconds_per_epoch": 7.31,
                               "images_per_second": 6840.0},
                              {"arch": "wrn_16_4", "path": "baseline", "seconds_per_epoch": 99.0}]), "name": "bench-h100"},
             {**bench_record([{"arch": "preact_resnet164", "path": "reproresnet", "seconds_per_epoch": 1449.0}]),
              "device": {"type": "cpu", "name": "Xeon"}, "name": "bench-cpu"}]
    table = report.speed_table(report.load_runs(tmp_path)[0], bench)
    assert list(dict.fromkeys(table["network"])) == [*reference.PLANNED, "seed_wrn_n2_k4"]
    seed = report.SEED_SECONDS
    shown = report.shown(table)
    by = {(table.at[index, "network"], line["measured by"]): line for index, line in shown.iterrows()}
    done = by["preact_resnet110", "training, 2 runs"]
    assert (done["our s/epoch"], done["our images/s"]) == ("21.0", "2,400")
    assert done["measured on"] == "NVIDIA H100, batch 64, bf16 autocast" and done[seed] == "90 (batch 32)"
    assert report.links(table, done.name, "our s/epoch") == ("preact_resnet110-seed0", "preact_resnet110-seed1")
    partial = by["preact_resnet110", "training, 3 runs, partial (2/200 epochs)"]
    assert partial["our s/epoch"] == "37.0" and partial["measured on"].endswith("3 runs packed")
    assert by["wrn_16_4", "benchmark"]["our s/epoch"] == "7.3"
    assert report.links(table, by["wrn_16_4", "benchmark"].name, "our s/epoch") == ("bench-h100",)
    # CPU times (the CPU run, the CPU benchmark) are never set beside the seed's GTX 980
    assert set(table[table["network"] == "preact_resnet164"]["our s/epoch"]) == {"not measured"}
    assert len(table[table["network"] == "wrn_16_4"]) == 1
    line = shown[table["network"] == "preact_resnet164"].iloc[0]
    assert line["parameters: paper; exact"] == "1.7M; 1,703,258"  # the authors' log
    assert shown[table["network"] == "seed_wrn_n2_k4"].iloc[0]["parameters: paper; exact"] == "≈5.7M; 5,702,746"
    assert list(dict.fromkeys(shown[seed])) == ["90 (batch 32)", "183 (batch 48)", "—", "113 (batch 64)"]


def test_benchmark_numbers_are_rounded_to_their_noise():
    assert report.to_noise(1448.916, 0.037) == "1,450" and report.to_noise(0.05241, 0.037) == "0.052"
    assert report.to_noise(35.7, 0.003) == "35.7" and report.to_noise(35.7, 0.0003) == "35.70"
    assert report.to_noise(7.31, None) == "7.3"
    row = {"arch": "preact_resnet110", "path": "reproresnet", "seconds_per_epoch": 1448.9,
           "images_per_second": 34.5, "seconds_per_step": 0.927, "seconds_per_step_range": [0.902, 0.970],
           "data_images_per_second": 33225.4, "data_images_per_second_range": [30714.1, 35341.3],
           "peak_memory_mb": None, "tflops": 0.0524}
    table = report.bench_table([{**bench_record([row]), "name": "bench-cpu"}])
    assert [table.iloc[0, 0], *report.shown(table).iloc[0, 1:]] == [
        "preact_resnet110", "reproresnet", "NVIDIA H100", "128", "1,450", "34", "33,000", report.MISSING, "0.052"]
    # a name, shown by its title: no number to link
    assert report.shown(table).iloc[0, 0] == "Pre-act ResNet-110" and report.links(table, 0, "network") == ()
    assert all(report.links(table, 0, column) == ("bench-cpu",) for column in table.columns[1:])


def test_benchmark_records_load_and_foreign_ones_are_problems(tmp_path):
    (tmp_path / "bench-h100").mkdir()
    (tmp_path / "bench-h100" / "bench.json").write_text(json.dumps(bench_record(
        [{"arch": "preact_resnet110", "path": "baseline", "seconds_per_epoch": 30.0}])))
    (tmp_path / "bench-old").mkdir()
    (tmp_path / "bench-old" / "bench.json").write_text(json.dumps(bench_record([], fmt="other")))
    benches, problems = report.load_benches(tmp_path)
    assert len(benches) == 1 and [Path(p["path"]).parent.name for p in problems] == ["bench-old"]
    table = report.bench_table(benches)
    assert table.iloc[0]["path"] == "baseline" and table.iloc[0]["device"] == "NVIDIA H100"
    assert report.load_runs(tmp_path) == ([], [])  # a benchmark directory is not a run


def test_html_table_carries_its_id_and_recipe_table_lists_every_recipe():
    html = report.html(report.recipe_table(), "recipe-table")
    assert 'id="recipe-table"' in html
    for index, name in enumerate(recipes.RECIPES, 1):  # a column each, its source a note
        # a setting wraps, a network never
        assert (frozenset({"text"}), name.replace("_", "_<wbr>")) in cells(html, "th")
        assert f'<li id="recipe-table-note-{index}">{name}: ' in html and f"note {index}" in html


def test_run_summary_and_figure_of_one_run(tmp_path):
    run_dir = make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", test_error=5.4, epochs=3)
    summary = report.run_summary(records.read_run(run_dir))
    assert report.shown(summary).loc["test error (%)", ""] == "5.40"
    figure = report.run_figure(run_dir)
    assert [line.get_ydata()[0] for line in gid_lines(figure.axes[0], "paper_error")] == [5.55]


# ---------------------------------------------------------------- scripts/check_book.py

def load_check_book():
    spec = importlib.util.spec_from_file_location("check_book", ROOT / "scripts" / "check_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_page(build, figure="../_images/curves.png", with_file=True, error_table=True):
    page = build / "notebooks" / "results.html"
    page.parent.mkdir(parents=True)
    errors = report.html(report.error_table([]), "error-table") if error_table else ""
    speed = report.html(pd.DataFrame({"network": ["wrn_16_4"], "parameters: paper; exact": ["1"]}), "speed-table")
    speed += report.html(report.compute_table([]), "compute-table")
    page.write_text(f"<html><body><main>{errors}{speed}<div class='cell tag_hide-input tag_training-curves'>"
                    f"<div class='output'><img alt='x' src='{figure}' /></div></div></main></body></html>")
    if with_file:
        (build / "_images").mkdir()
        (build / "_images" / "curves.png").write_bytes(b"\x89PNG")


def test_check_book_accepts_a_complete_results_page(tmp_path, capsys):
    write_page(tmp_path)
    assert load_check_book().main([str(tmp_path)]) == 0


@pytest.mark.parametrize("page, expected", [
    ({"with_file": False}, "not found on disk"),
    ({"figure": "../_images/curves.gif"}, "no training-curve figure"),
    ({"error_table": False}, "error-table"),
])
def test_check_book_rejects_a_page_missing_a_part(tmp_path, capsys, page, expected):
    write_page(tmp_path, **page)
    assert load_check_book().main([str(tmp_path)]) == 1
    assert expected in capsys.readouterr().err


def test_check_book_without_a_build(tmp_path, capsys):
    assert load_check_book().main([str(tmp_path / "_build" / "html")]) == 1
    assert "build the book first" in capsys.readouterr().err


# ---------------------------------------------------------------- what each column holds, notes, compute

def notes_of(table, network):
    line = row(table, network)
    return [table.attrs["notes"][int(n) - 1] for n in line[report.NOTES].split(", ")] \
        if line[report.NOTES] != report.MISSING else []


def test_every_quoted_number_says_its_statistic_and_the_seed_network_has_its_row():
    table = report.error_table([])
    assert dict(zip(table["network"], table[report.PAPER_STATISTIC]))["preact_resnet164"] == "median of 5"
    assert dict(zip(table["network"], table[report.PAPER_STATISTIC]))["resnet110"] == "mean of 5"
    for quoted in reference.REFERENCE:
        if quoted["paper_error"] is not None:
            assert row(table, quoted["network"])[report.PAPER_STATISTIC] != report.MISSING
            assert any("He et al." in note or "Zagoruyko" in note for note in notes_of(table, quoted["network"]))
    seed_net = row(table, "seed_wrn_n2_k4")
    assert seed_net[report.SEED] == "5.41" and seed_net[report.PAPER] == report.MISSING
    assert row(table, "wrn_16_4")[report.SEED] == report.MISSING  # 5.41 is not WRN-16-4's
    wrn_notes = notes_of(table, "wrn_16_4")
    assert any("5.41 % under the name WRN-16-4" in note and "2, 4 and 4 units" in note and "22 layers" in note
               and "≈5.7M" in note and 'its own row, ReScience "WRN n=2, k=4"' in note for note in wrn_notes)
    assert [note for note in notes_of(table, "seed_wrn_n2_k4") if "4 units" in note] == \
        [note for note in wrn_notes if "4 units" in note]


def test_notes_say_where_the_seeds_numbers_came_from_and_each_quoted_numbers_preprocessing_and_precision():
    table = report.error_table([])
    resnet110 = notes_of(table, "preact_resnet110")
    assert any("6.38 came from its code at 7c4c997" in note and "seed_code_2016_04" in note for note in resnet110)
    assert any("5.66 came from its code at 3403cfb" in note and "batch 48" in note
               for note in notes_of(table, "preact_resnet164"))
    assert any("per-pixel mean subtracted" in note for note in resnet110)
    assert any("global contrast normalization and ZCA whitening" in note for note in notes_of(table, "wrn_16_4"))
    for quoted in reference.REFERENCE:
        assert reference.QUOTED_PRECISION in notes_of(table, quoted["network"])


def test_notes_say_how_recipe_and_data_differ_from_the_papers(tmp_path):
    make_run(tmp_path, "preact_resnet110-he", recipe="he2016", epochs=164)
    make_run(tmp_path, "wrn_16_4-val", arch="wrn_16_4", recipe="wrn2016", n_train=45_000, n_val=5_000)
    table = report.error_table(report.load_runs(tmp_path)[0])
    he_notes = notes_of(table, "preact_resnet110")
    # He et al.'s recipe, recorded in epochs: only the length differs, and the data not at all.
    assert [note for note in he_notes if "recipe 'he2016'" in note] == \
        [note for note in he_notes if "164 epochs instead of 64,000 iterations" in note]
    assert not any("data:" in note for note in he_notes)
    wrn_notes = notes_of(table, "wrn_16_4")
    assert any("45,000 images with 5,000 held out" in note for note in wrn_notes)
    assert any("per_pixel_mean instead of gcn_zca" in note for note in wrn_notes)  # 5.55 is WRN v1's, whitened
    assert not any("recipe 'wrn2016'" in note for note in wrn_notes)  # the paper's own recipe, 200 epochs
    assert "wrn_16_4, precision: bf16 autocast (the runs' records)." in wrn_notes


def test_compute_table_times_and_gpu_hours_of_the_runs_behind_the_error_table(tmp_path):
    make_run(tmp_path, "preact_resnet110-seed0", seconds_per_epoch=18.0, epochs=200)
    make_run(tmp_path, "preact_resnet110-seed1", seed=1, seconds_per_epoch=27.0, epochs=200)
    make_run(tmp_path, "preact_resnet110-mirror", label="CIFAR-10 (JPEG mirror)", dataset="folder:/m",
             seconds_per_epoch=1000.0)  # not behind the table: not counted
    table = by_network(report.compute_table(report.load_runs(tmp_path)[0]))
    line = table.loc["preact_resnet110"]
    assert line[report.SEED_SECONDS] == "90 (batch 32)" and line[report.SEED_HOURS] == "5.0"
    assert line["our s/epoch (median)"] == "22.5" and line["runs"] == "2"
    assert line["wall time per run (h, median)"] == "2.5"  # 06:00 to 08:30
    assert line["GPU-hours, all runs"] == f"{200 * (18 + 27) / 3600:.1f}"
    assert table.loc["preact_resnet164", "our device"] == "not run"
    assert table.loc["resnet110", "our s/epoch (median)"] == report.NOT_MEASURED  # planned (tier 2), not run
    # planned, not yet run: "not measured"; the seed's 113 s/epoch are its 22-layer network's, not WRN-16-4's
    assert list(table.loc["wrn_16_4", [report.SEED_SECONDS, "our s/epoch (median)"]]) == [report.MISSING,
                                                                                          report.NOT_MEASURED]
    assert table.loc["seed_wrn_n2_k4", report.SEED_HOURS] == "6.3"


def test_status_table_and_line_say_where_the_plan_stands(tmp_path):
    runs = []
    assert report.status_line(runs).startswith(
        "0 of 15 planned CIFAR-10 runs are complete (5 networks × 3 seeds, in 2 tiers)")
    table = report.status_table(runs)
    assert list(table["network"]) == [*reference.PLANNED, "seed_wrn_n2_k4"]  # the plan, then the seed's own
    quoted = reference.reference("preact_resnet164")  # quoted with its statistic, read from reference.py
    line = row(table, "preact_resnet164")
    assert line[report.STATUS_PAPER] == f"{quoted['paper_error']:.2f}, {quoted['paper_statistic'][0]}"
    assert line[report.STATUS_SEED] == f"{quoted['seed_error']:.2f}"
    shown = report.shown(table)
    assert set(shown["ours, CIFAR-10 (%)"]) == set(shown[report.STATUS_MIRROR]) == {report.NOT_RUN}
    assert list(shown["GPU-hours to finish (est.)"]) == ["not measured"] * 5 + ["not planned"]

    make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", test_error=6.0)
    make_run(tmp_path, "wrn_16_4-seed1", arch="wrn_16_4", seed=1, test_error=6.5)
    for seed in (0, 1, 2):  # three runs packed on one GPU, stopped at a deadline after 2 epochs
        run_dir = with_speed(make_run(tmp_path, f"preact_resnet110-jpeg-seed{seed}", seed=seed, status="stopped",
                                      label=report.JPEG_MIRROR, dataset="folder:/m"),
                             {"seconds_per_epoch": 36.0 + seed, "images_per_second": 1350, "pack": 3})
        record = json.loads((run_dir / records.RUN_FILE).read_text())
        record["message"] = "stopped cleanly after epoch 2 of 200 (deadline); resume to continue"
        (run_dir / records.RUN_FILE).write_text(json.dumps(record))
        (run_dir / records.CHECKPOINT_FILE).write_bytes(b"weights")
    runs = report.load_runs(tmp_path)[0]
    assert report.status_line(runs) == (
        "2 of 15 planned CIFAR-10 runs are complete (5 networks × 3 seeds, in 2 tiers). On the JPEG mirror of "
        "CIFAR-10, whose numbers are not CIFAR-10 results: 0 of 15 complete; 3 runs stopped at 2/200 (deadline), "
        "resumable.")
    table = report.status_table(runs)
    wrn = row(table, "wrn_16_4")
    assert wrn["ours, CIFAR-10 (%)"] == "6.25 ± 0.35 (2 of 3 seeds, 200 epochs)"
    assert report.links(table, wrn.name, "ours, CIFAR-10 (%)") == ("wrn_16_4-seed0", "wrn_16_4-seed1")
    resnet = row(table, "preact_resnet110")
    assert resnet[report.STATUS_MIRROR] == "3 runs stopped at 2/200 (deadline), resumable"
    assert resnet["ours, CIFAR-10 (%)"] == report.NOT_RUN
    # GPU time: 3 runs x 2 epochs x 20 s, each epoch shared by 3 packed runs; to finish: the 594
    # missing epochs of the plan at 37 s / 3 runs a GPU-epoch
    assert resnet["GPU-hours spent"] == f"{3 * 2 * 20 / 3 / 3600:.2g}"
    assert resnet["GPU-hours to finish (est.)"] == f"≈{(3 * 200 - 6) * 37 / 3 / 3600:.1f} (NVIDIA H100)"
    assert report.links(table, resnet.name, "GPU-hours spent") == \
        tuple(f"preact_resnet110-jpeg-seed{seed}" for seed in (0, 1, 2))
    # WRN-16-4 has no GPU time of its own: its last 200 epochs at ResNet-110's, scaled by their GFLOPs
    ratio = architectures.row("wrn_16_4")["gflops"] / architectures.row("preact_resnet110")["gflops"]
    assert wrn["GPU-hours to finish (est.)"] == \
        f"≈{(3 * 200 - 2 * 200) * 37 / 3 * ratio / 3600:.1f} (estimated from preact_resnet110; NVIDIA H100)"
    assert report.links(table, wrn.name, "GPU-hours to finish (est.)") == report.links(table, resnet.name, "GPU-hours spent")
    # Their checkpoints gone, the 6 epochs done cannot be resumed: finishing is the whole plan again.
    for seed in (0, 1, 2):
        (tmp_path / f"preact_resnet110-jpeg-seed{seed}" / records.CHECKPOINT_FILE).unlink()
    resnet = row(report.status_table(report.load_runs(tmp_path)[0]), "preact_resnet110")
    assert resnet[report.STATUS_MIRROR] == "3 runs stopped at 2/200 (deadline), checkpoint not kept"
    assert resnet["GPU-hours to finish (est.)"] == f"≈{3 * 200 * 37 / 3 / 3600:.1f} (NVIDIA H100)"


def test_gpu_seconds_share_a_packed_gpu_and_count_no_cpu_epochs(tmp_path):
    run_dir = make_run(tmp_path, "a", epochs=4, metric_rows=[{"epoch": e, "train_loss": 1.0, "test_error": 5.0,
                                                              "seconds": 30.0} for e in range(1, 5)])
    with_speed(run_dir, {"first_epoch": 1, "last_epoch": 2, "pack": 3},
               {"first_epoch": 3, "last_epoch": 3, "pack": 1, "stacked": 2},
               {"first_epoch": 4, "last_epoch": 4, "device": "cpu"})
    assert report.gpu_seconds(records.RunRecord.read(run_dir)) == pytest.approx(2 * 30 / 3 + 30 / 2)


def _verdicts(tmp_path) -> tuple:
    """The claims table, and its rows as the book shows them by claim."""
    table = report.claims_table(report.load_runs(tmp_path)[0])
    return table, {line["claim"]: line for _, line in report.shown(table).iterrows()}


def test_claims_table_quotes_each_claim_and_tests_none_before_its_runs_are_complete(tmp_path):
    make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", test_error=6.0)
    make_run(tmp_path, "wrn_16_4-seed1", arch="wrn_16_4", seed=1, test_error=6.2)
    table = report.claims_table(report.load_runs(tmp_path)[0])
    quoted = [row for row in reference.REFERENCE if row["network"] in report.status_networks()]
    expected = [f"{row['title']} reaches {row['paper_error']:.2f} % test error on CIFAR-10 ({row['paper_statistic'][0]})"
                for row in quoted if row["paper_error"] is not None]
    assert [claim for claim in table["claim"] if "reaches" in claim] == expected
    assert {"ResNet-110 (original) reaches 6.61 % test error on CIFAR-10 (mean of 5)",
            "ResNet-164 (original) reaches 5.93 % test error on CIFAR-10 (median of 5)"} <= set(expected)
    assert sum("The ReScience reproduction reports" in claim for claim in table["claim"]) == \
        sum(row["seed_error"] is not None for row in quoted)
    by_claim = {line["claim"]: line for _, line in report.shown(table).iterrows()}
    wrn = by_claim["WRN-16-4 reaches 5.55 % test error on CIFAR-10 (not stated)"]
    assert wrn["ours on CIFAR-10 (%)"] == "wrn_16_4 6.10 ± 0.14 (2 of 3 seeds, 200 epochs)"
    assert wrn["verdict"] == "not tested yet (2 of 3 complete runs)"
    assert report.links(table, wrn.name, "verdict") == report.links(table, wrn.name, "ours on CIFAR-10 (%)") == \
        ("wrn_16_4-seed0", "wrn_16_4-seed1")
    assert wrn["tested by"] == "wrn_16_4: 3 complete CIFAR-10 runs"
    assert report.links(table, wrn.name, "tested by") == ("wrn_16_4-seed0", "wrn_16_4-seed1")
    compared = by_claim["Pre-act ResNet-110 (6.37 %) has lower error than ResNet-110 (original) (6.61 %)"]
    assert compared["verdict"] == "not tested yet: no complete run"
    assert compared["tested by"] == "preact_resnet110 and resnet110: 3 complete CIFAR-10 runs each"
    assert compared["ours on CIFAR-10 (%)"] == "preact_resnet110 not run yet; resnet110 not run yet"
    assert "WRN-16-4 (5.55 %) matches Pre-act ResNet-164 (5.46 %)" in by_claim
    seed_wrn = by_claim[next(claim for claim in by_claim if "5.41" in claim)]
    assert seed_wrn["verdict"] == "not tested: seed_wrn_n2_k4 is not in the plan"
    assert "within our mean ± 2 sample standard deviations" in report.CLAIM_RULE


def _complete(tmp_path, arch, errors, label="CIFAR-10"):
    for seed, error in enumerate(errors):
        make_run(tmp_path, f"{arch}-{'jpeg' if 'JPEG' in label else 'c10'}-seed{seed}", arch=arch, seed=seed, test_error=error, label=label)


def test_claims_are_decided_by_the_stated_rule_from_both_tiers(tmp_path):
    _complete(tmp_path, "preact_resnet110", [6.2, 6.4, 6.5])   # mean 6.37, sd 0.15: 6.06-6.67
    _complete(tmp_path, "resnet110", [6.9, 7.0, 7.1])          # mean 7.00, sd 0.10: 6.80-7.20
    _complete(tmp_path, "preact_resnet164", [5.9, 6.0, 6.1])
    _complete(tmp_path, "resnet164", [5.0, 5.1, 5.2])          # the original unit lower: refuted
    _complete(tmp_path, "wrn_16_4", [5.5, 5.6, 5.7])
    _complete(tmp_path, "wrn_16_4", [1.0, 1.0, 1.1], label="CIFAR-10 (JPEG mirror)")  # tests nothing
    table, verdicts = _verdicts(tmp_path)
    assert verdicts["Pre-act ResNet-110 reaches 6.37 % test error on CIFAR-10 (median of 5)"]["verdict"] == \
        "reproduced: 6.37 lies in 6.06–6.67"
    assert verdicts["The ReScience reproduction reports 6.38 % for Pre-act ResNet-110 (single run)"]["verdict"].startswith("reproduced")
    original = verdicts["ResNet-110 (original) reaches 6.61 % test error on CIFAR-10 (mean of 5)"]
    assert original["verdict"] == "not reproduced: 6.61 lies outside 6.80–7.20"
    assert report.links(table, original.name, "verdict") == tuple(f"resnet110-c10-seed{seed}" for seed in range(3))
    # 7.00 - 6.37 = +0.63 points against 2 * sqrt(0.0233/3 + 0.01/3) = 0.21
    comparison = verdicts["Pre-act ResNet-110 (6.37 %) has lower error than ResNet-110 (original) (6.61 %)"]
    assert comparison["verdict"] == "reproduced: +0.63 points, 2 standard errors 0.21"
    assert set(report.links(table, comparison.name, "verdict")) == {f"{arch}-c10-seed{seed}" for arch in ("preact_resnet110",
                                                                                          "resnet110") for seed in range(3)}
    assert verdicts["Pre-act ResNet-164 (5.46 %) has lower error than ResNet-164 (original) (5.93 %)"]["verdict"] == \
        "refuted: -0.90 points, 2 standard errors 0.16"
    assert verdicts["WRN-16-4 (5.55 %) matches Pre-act ResNet-164 (5.46 %)"]["verdict"] == \
        "not reproduced: +0.40 points, 2 standard errors 0.16"
    assert verdicts["WRN-16-4 reaches 5.55 % test error on CIFAR-10 (not stated)"]["verdict"] == \
        "reproduced: 5.55 lies in 5.40–5.80"


def test_the_plan_table_costs_each_network_measured_or_estimated_from_the_records(tmp_path):
    table = report.plan_table([])
    assert [(line["tier"], network) for network, (_, line) in zip(table["network"], report.shown(table).iterrows())] == \
        [(str(tier), network) for tier, networks in enumerate(reference.PLAN_TIERS, 1) for network in networks]
    assert set(table["GPU-seconds per epoch, one run"]) == {report.NOT_MEASURED}  # and no total
    for seed in (0, 1, 2):  # three runs packed on one GPU: each epoch a third of the GPU's time
        with_speed(make_run(tmp_path, f"preact_resnet110-jpeg-seed{seed}", seed=seed, status="stopped",
                            label=report.JPEG_MIRROR, dataset="folder:/m"),
                   {"seconds_per_epoch": 36.0 + seed, "images_per_second": 1350, "pack": 3})
    runs = report.load_runs(tmp_path)[0]
    values = report.plan_table(runs)
    table = by_network(values)
    measured = table.loc["preact_resnet110"]
    assert measured["GPU-seconds per epoch, one run"] == f"{37 / 3:.1f}"
    assert measured["GPU-hours, its runs"] == f"{3 * 200 * 37 / 3 / 3600:.1f}"
    assert measured["how the time is known"] == "measured (NVIDIA H100, bf16 autocast)"
    label = row(values, "preact_resnet110").name
    assert report.links(values, label, "how the time is known") == report.links(values, label, "GPU-hours, its runs")
    ratio = architectures.row("wrn_16_4")["gflops"] / architectures.row("preact_resnet110")["gflops"]
    wrn = table.loc["wrn_16_4"]
    assert wrn["GPU-seconds per epoch, one run"] == f"{37 / 3 * ratio:.1f}"
    assert wrn["how the time is known"] == \
        f"estimated: preact_resnet110's 12.3 s × {ratio:.2f} (GFLOPs ratio; NVIDIA H100, bf16 autocast)"
    assert report.links(values, row(values, "wrn_16_4").name, "GPU-hours, its runs") == \
        tuple(f"preact_resnet110-jpeg-seed{seed}" for seed in (0, 1, 2))
    hours = [3 * 200 * 37 / 3 * (architectures.row(n)["gflops"] / architectures.row("preact_resnet110")["gflops"])
             / 3600 for n in reference.PLANNED]
    assert table.loc["the whole plan", "GPU-hours, its runs"] == f"{sum(hours):.1f}"
    assert table.loc["the whole plan", "runs"] == "15"
    assert report.plan_line().startswith("5 networks × 3 seeds (0, 1, 2) = 15 runs of 200 epochs on CIFAR-10, "
                                         "in 2 tiers (tier 1: preact_resnet110, preact_resnet164, wrn_16_4; tier 2: "
                                         "resnet110, resnet164)")


def test_html_table_right_aligns_number_columns_and_lists_the_notes():
    seeds = render.cell(((6.0, 0), (7.0, 1)), format=lambda pairs: ", ".join(f"{e:.2f} (seed {s})" for e, s in pairs),
                        worded=True)  # numbers in words: text
    table = render.table([{"network": "a", "error (%)": (6.0, 7.0), "n": 2, "each seed": seeds},
                          {"network": "b", "error (%)": report.NOT_RUN, "n": 0, "each seed": None}],
                         formats={"error (%)": report.mean_std}, notes=["first <note>"])
    html = report.html(table, "t")
    assert [kind for kind, _ in cells(html, "th")] == [{"text"}, {"num"}, {"num"}, {"text"}]
    assert [inner for _, inner in cells(html, "th")] == ["network", "error (%)", "n", "each seed"]
    assert ({"num"}, "6.50 ± 0.71") in cells(html) and ({"num"}, "not run") in cells(html)
    assert ({"text"}, "6.00 (seed 0), 7.00 (seed 1)") in cells(html)
    assert html.endswith('<ol class="table-notes"><li id="t-note-1">first &lt;note&gt;</li></ol>')


def test_html_table_links_each_number_to_its_record_and_marks_quoted_ones():
    """What the browser test holds every table of the book to, cell by cell."""
    both = [{"name": "r-seed0"}, {"name": "r-seed1"}]
    table = render.table([{"network": "preact_resnet110", report.PAPER: 6.37, "ours": render.cell((6.0, 7.0), both),
                           report.EACH_SEED: render.cell((6.0, 7.0), both), report.NOTES: (1, 2)}],
                         formats={"ours": report.mean_std}, parts=[report.EACH_SEED], quoted=[report.PAPER],
                         notes=["a", "b"])
    html = report.html(table, "t")
    assert ({"num", "quoted"}, "6.37") in cells(html) and 'data-source="records"' in html
    assert '<a class="record-link" href="../book/runs/r-seed0.html" title="records: r-seed0, r-seed1">' \
           '6.50 ± 0.71</a>' in html
    assert '<a class="record-link" href="../book/runs/r-seed0.html" title="record: r-seed0">6.00</a>, ' \
           '<a class="record-link" href="../book/runs/r-seed1.html" title="record: r-seed1">7.00</a>' in html
    assert '<a class="note-ref" href="#t-note-1">1</a>, <a class="note-ref" href="#t-note-2">2</a>' in html
    assert '<li id="t-note-2">b</li>' in html
    assert 'href="r-seed0.html"' in report.html(table, "t", pages="")  # from another record's page
    # a network's name never breaks at its underscore; a path may after a slash
    assert "preact_<wbr>" not in html
    assert "results/<wbr>x/<wbr>run.json" in report.html(pd.DataFrame({"path": ["results/x/run.json"]}), "p")


def test_jpeg_mirror_runs_get_the_same_table_under_their_own_name(tmp_path):
    """Protects the mirror's numbers from reaching the CIFAR-10 column, and gives them their own table."""
    mirror = report.JPEG_MIRROR
    for seed, error in ((0, 7.0), (1, 8.0)):
        make_run(tmp_path, f"wrn_16_4-jpeg-seed{seed}", arch="wrn_16_4", label=mirror, seed=seed,
                 test_error=error, dataset="folder:data/cifar10-jpeg")
    runs, _ = report.load_runs(tmp_path)
    assert row(report.error_table(runs), "wrn_16_4")[report.OURS] == report.NOT_RUN
    table = report.error_table(runs, label=mirror)
    ours = f"this project on the {mirror} (%): mean ± std"
    assert ours in table.columns and report.OURS not in table.columns
    line = row(table, "wrn_16_4")
    assert (line[ours], line["n"]) == ("7.50 ± 0.71", "2")
    assert line[report.EACH_SEED] == "7.00 (seed 0), 8.00 (seed 1)"
    assert row(table, "preact_resnet110")[ours] == report.NOT_RUN


def test_ablation_table_has_a_row_per_option_value_with_mean_std_and_n(tmp_path):
    """Protects an ablation's runs from being averaged with the recipe's own, or dropped."""
    def run(name, seed, error, **config):
        run_dir = make_run(tmp_path, name, arch="preact_resnet110", seed=seed, test_error=error)
        record = json.loads((run_dir / records.RUN_FILE).read_text())
        record["config"].update(config)
        (run_dir / records.RUN_FILE).write_text(json.dumps(record))

    run("preact_resnet110-seed0", 0, 6.0)
    run("preact_resnet110-seed1", 1, 7.0)
    run("preact_resnet110-shortcut-raw-seed0", 0, 6.5, shortcut="input_projection")
    make_run(tmp_path, "preact_resnet110-smoke-seed0", label="synthetic", test_error=50.0)  # not real data
    make_run(tmp_path, "preact_resnet110-subset-seed0", limit_train=5000, n_train=5000)    # not the whole set
    table = report.ablation_table(report.load_runs(tmp_path)[0])
    assert list(table["settings"]) == ["recipe defaults", "shortcut=input_projection"]
    assert list(report.shown(table)["test error (%): mean ± std"]) == ["6.50 ± 0.71", "6.50"]
    assert list(report.shown(table)["n"]) == ["2", "1"]


def test_tables_show_network_titles_with_the_identifier_on_hover_and_scroll_in_a_container(tmp_path):
    make_run(tmp_path, "preact_resnet110-jpeg-seed0", status="stopped", label=report.JPEG_MIRROR, dataset="folder:/m")
    runs = report.load_runs(tmp_path)[0]
    table = report.status_table(runs)
    assert list(table["network"]) == list(report.status_networks())  # computed with the identifiers
    assert report.STATUS_SEED.startswith("ReScience repr. (%)") and "seed" not in report.SEED.lower()
    html = report.html(table, "status-table")
    assert re.match(r'<div class="table-scroll">\s*<table id="status-table"', html)
    assert re.search(r"</table>\s*</div>", html)
    assert '<span class="network" title="preact_resnet110">Pre-act ResNet-110</span>' in html
    assert '<span class="network" title="seed_wrn_n2_k4">ReScience &quot;WRN n=2, k=4&quot;</span>' in html
    # the status words ("stopped", "interrupted", "checkpoint not kept") are explained in one place
    assert f'<a href="../book/runs/{report.STATUS_WORDS}">status words</a>' in html
    assert "status words" in report.html(report.other_runs_table(runs), "other-runs-table")
    assert "status words" not in report.html(report.compute_table(runs), "compute-table")


def test_the_run_index_is_a_table_of_network_data_epochs_status_and_error(tmp_path):
    make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", test_error=5.4, epochs=3)
    make_run(tmp_path, "preact_resnet110-jpeg-seed0", status="stopped", label=report.JPEG_MIRROR, dataset="folder:/m")
    table = report.run_index_table(report.load_runs(tmp_path)[0])
    assert list(table.columns) == ["run", "network", "data", "epochs done / planned", "status", "test error (%)"]
    shown = report.shown(table).assign(network=table["network"])  # the identifiers, shown by their titles
    assert [list(row) for row in shown.itertuples(index=False)] == [
        ["preact_resnet110-jpeg-seed0", "preact_resnet110", "CIFAR-10 (JPEG mirror), 50,000 training images", "2/200",
         "stopped at 2/200 (interrupted), checkpoint not kept", "11.00 (epoch 2)"],
        ["wrn_16_4-seed0", "wrn_16_4", "CIFAR-10, 50,000 training images", "3/3", "complete", "5.40"]]
    assert report.links(table, 0, "test error (%)") == ("preact_resnet110-jpeg-seed0",)
    assert table.iloc[1]["network"] == "wrn_16_4" and report.shown(table).iloc[1]["network"] == "WRN-16-4"


def test_thread_rules_round_each_row_to_its_own_noise_and_link_the_benchmark():
    """Protects each row's rounding from another row's noise, and every number's link."""
    rules = [{"arch": "preact_resnet20", "rule": "free cores", "threads": [2, 1, 2], "load_averages": [1.0, 1.5],
              "images_per_second": 1448.9, "seconds_per_step": 1.0, "seconds_per_step_range": [0.963, 1.037]},
             {"arch": "preact_resnet20", "rule": "all cores", "threads": [4], "load_averages": [2.0, 2.25],
              "images_per_second": 1300.0, "seconds_per_step": 1.0, "seconds_per_step_range": [0.9997, 1.0003]}]
    table = report.thread_rules_table({"name": "bench-cpu", "thread_rules": rules})
    assert [list(row) for row in report.shown(table).iloc[:, 2:].itertuples(index=False)] == [
        ["1–2", "1.0–1.5", "1,450", "1.00×"], ["4", "2.0–2.2", "1,300.0", "0.90×"]]
    assert all(report.links(table, row, column) == ("bench-cpu",) for row in table.index for column in table.columns[2:])


def test_a_note_says_how_crops_and_flips_were_drawn(tmp_path):
    run_dir = make_run(tmp_path, "wrn_16_4-batch", arch="wrn_16_4", recipe="wrn2016")
    record = json.loads((run_dir / records.RUN_FILE).read_text())
    record["data"]["augmentation"] = "per_batch"
    (run_dir / records.RUN_FILE).write_text(json.dumps(record))
    notes = notes_of(report.error_table(report.load_runs(tmp_path)[0]), "wrn_16_4")
    assert any("crop and flip drawn per batch instead of per image" in note for note in notes)
