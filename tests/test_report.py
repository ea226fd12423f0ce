"""The book's tables and figures, from fabricated run directories (nothing is trained)."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from reproresnet import recipes, records, reference, report
from reproresnet.recipes import RECIPES

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
    rows = table[table["network"] == network]
    assert len(rows) == 1, table
    return rows.iloc[0]


def test_error_table_shows_mean_std_and_n_over_two_cifar10_seeds(tmp_path):
    make_run(tmp_path, "preact_resnet110-seed0", seed=0, test_error=6.0, device="NVIDIA H100")
    make_run(tmp_path, "preact_resnet110-seed1", seed=1, test_error=7.0, device="NVIDIA H200")
    runs, problems = report.load_runs(tmp_path)
    assert problems == []
    table = report.error_table(runs)
    line = row(table, "preact_resnet110")
    assert line[report.OURS] == "6.50 ± 0.71"  # sample standard deviation
    assert line["n"] == 2
    assert line[report.EACH_SEED] == "6.00 (seed 0), 7.00 (seed 1)"
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
    assert line[report.OURS] == "5.12" and line["n"] == 1


def test_network_without_runs_shows_not_run(tmp_path):
    make_run(tmp_path, "preact_resnet110-seed0")
    table = report.error_table(report.load_runs(tmp_path)[0])
    for network in ("preact_resnet164", "wrn_16_4", "resnet110", "resnet164"):
        assert row(table, network)[report.OURS] == "not run"
        assert row(table, network)["n"] == 0
    assert list(table["network"][:3]) == list(reference.REPRODUCED)


def test_empty_results_every_network_not_run(tmp_path):
    runs, problems = report.load_runs(tmp_path / "does-not-exist")
    assert runs == [] and problems == []
    table = report.error_table(runs)
    assert set(table[report.OURS]) == {"not run"}
    assert "not run" in report.budget_summary(runs)
    assert report.other_runs_table(runs).empty
    assert set(report.speed_table(runs)["s/epoch here"]) == {"not measured"}


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
    assert not errors.apply(lambda column: column.astype(str).str.contains("1.23")).any().any()
    other = report.other_runs_table(runs)
    assert list(other["run"]) == ["preact_resnet110-seed0"]
    assert other.iloc[0]["data set"] == label and other.iloc[0]["test error (%)"] == "1.23"
    assert "not CIFAR-10" in other.iloc[0]["not in the CIFAR-10 table because"] or \
        "subset" in other.iloc[0]["not in the CIFAR-10 table because"]
    assert "1 complete" not in report.budget_summary(runs)


def test_diverged_run_shows_failed(tmp_path):
    make_run(tmp_path, "preact_resnet164-seed0", arch="preact_resnet164", status="diverged")
    runs, _ = report.load_runs(tmp_path)
    assert row(report.error_table(runs), "preact_resnet164")[report.OURS] == "failed"
    other = report.other_runs_table(runs)
    assert other.iloc[0]["status"] == "diverged"
    assert "diverged" in other.iloc[0]["not in the CIFAR-10 table because"]


def test_diverged_seed_is_counted_beside_the_complete_ones(tmp_path):
    make_run(tmp_path, "preact_resnet164-seed0", arch="preact_resnet164", test_error=5.5)
    make_run(tmp_path, "preact_resnet164-seed1", arch="preact_resnet164", seed=1, status="diverged")
    line = row(report.error_table(report.load_runs(tmp_path)[0]), "preact_resnet164")
    assert line[report.OURS] == "5.50 (1 failed)" and line["n"] == 1


def test_unfinished_cifar10_run_is_in_progress_and_shows_its_last_epoch(tmp_path):
    make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", status="running",
             metric_rows=[{"epoch": 1, "train_loss": 2.0, "test_error": 50.0},
                          {"epoch": 2, "train_loss": 1.5, "test_error": 40.25}])
    runs, _ = report.load_runs(tmp_path)
    assert row(report.error_table(runs), "wrn_16_4")[report.OURS] == "in progress"
    other = report.other_runs_table(runs)
    assert other.iloc[0]["test error (%)"] == "40.25 (epoch 2)"
    assert other.iloc[0]["epochs (done/planned)"] == "2/200"
    # the budget stands beside the number: batch size, device and precision of the run
    assert other.iloc[0]["device, batch, precision"] == "NVIDIA H100, batch 64, bf16 autocast"


def test_runs_with_different_settings_are_not_averaged_together(tmp_path):
    make_run(tmp_path, "a", recipe="seed", test_error=6.0)
    make_run(tmp_path, "b", recipe="he2016", test_error=7.0, epochs=164)
    runs = report.load_runs(tmp_path)[0]
    table = report.error_table(runs)
    lines = table[table["network"] == "preact_resnet110"]
    assert sorted(lines[report.OURS]) == ["6.00", "7.00"]
    compute = report.compute_table(runs)
    assert sorted(compute[compute["network"] == "preact_resnet110"]["epochs"]) == ["164", "200"]


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


def test_plot_curves_draws_the_paper_error_as_a_dashed_reference_line(tmp_path):
    run_dir = make_run(tmp_path, "preact_resnet110-seed0", epochs=3)
    figure = report.plot_curves(run_dir, paper_error=6.37)
    loss_axes, error_axes = figure.axes
    reference_lines = [line for line in error_axes.get_lines() if line.get_gid() == "paper_error"]
    assert len(reference_lines) == 1
    assert reference_lines[0].get_linestyle() == "--"
    assert list(reference_lines[0].get_ydata()) == [6.37, 6.37]
    assert [list(line.get_xdata()) for line in loss_axes.get_lines()] == [[1, 2, 3]]
    title = figure._suptitle.get_text()
    assert "CIFAR-10" in title and "3/3 epochs" in title and "batch 64" in title


def test_plot_curves_from_a_dataframe_without_reference(tmp_path):
    metrics = pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.0], "test_error": [50.0, 40.0]})
    figure = report.plot_curves(metrics, title="two epochs")
    assert not [line for line in figure.axes[1].get_lines() if line.get_gid() == "paper_error"]
    assert figure._suptitle.get_text() == "two epochs"


def test_curves_of_a_jpeg_mirror_run_have_no_paper_line_and_say_so(tmp_path):
    make_run(tmp_path, "preact_resnet110-mirror", label="CIFAR-10 (JPEG mirror)", dataset="folder:/mirror",
             n_train=5000, limit_train=5000, epochs=2)
    runs, _ = report.load_runs(tmp_path)
    figure = report.curves_for_network(runs, "preact_resnet110")
    assert "not a CIFAR-10 result" in figure._suptitle.get_text()
    assert "CIFAR-10 (JPEG mirror)" in figure._suptitle.get_text()
    assert not [line for line in figure.axes[1].get_lines() if line.get_gid() == "paper_error"]
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
    assert "CIFAR-10 (JPEG mirror)" in figure._suptitle.get_text() and "3/3 epochs" in figure._suptitle.get_text()


def test_curves_of_cifar10_runs_carry_the_paper_error(tmp_path):
    make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", epochs=4)
    make_run(tmp_path, "wrn_16_4-seed1", arch="wrn_16_4", seed=1, epochs=4)
    figure = report.curves_for_network(report.load_runs(tmp_path)[0], "wrn_16_4")
    lines = figure.axes[1].get_lines()
    assert [line.get_ydata()[0] for line in lines if line.get_gid() == "paper_error"] == [5.55]
    assert len([line for line in lines if line.get_gid() != "paper_error"]) == 2


def bench_record(rows, device="NVIDIA H100", fmt=report.BENCH_FORMAT):
    return {"format": fmt, "device": {"type": "cuda", "name": device}, "batch_size": 128, "steps": 50,
            "rows": rows}


def test_speed_table_parameters_and_seconds_per_epoch(tmp_path):
    make_run(tmp_path, "preact_resnet110-seed0", seconds_per_epoch=20.0)
    make_run(tmp_path, "preact_resnet110-seed1", seed=1, seconds_per_epoch=22.0)
    make_run(tmp_path, "preact_resnet110-smoke", label="synthetic", n_train=1000, limit_train=1000,
             seconds_per_epoch=0.5)  # a small epoch says nothing about a CIFAR-10 epoch
    bench = bench_record([{"arch": "wrn_16_4", "path": "reproresnet", "seconds_per_epoch": 7.31},
                          {"arch": "wrn_16_4", "path": "baseline", "seconds_per_epoch": 99.0}])
    table = report.speed_table(report.load_runs(tmp_path)[0], bench).set_index("network")
    assert list(table.index) == [*reference.REPRODUCED, "seed_wrn_n2_k4"]
    assert table.loc["preact_resnet164", "parameters (paper)"] == "1.7M"
    assert table.loc["preact_resnet164", "parameters (exact, ours)"] == "1,703,258"  # the authors' log
    assert table.loc["wrn_16_4", "parameters (paper)"] == "2.7M"
    assert table.loc["seed_wrn_n2_k4", "parameters (exact, ours)"] == "5,702,746"
    assert list(table["seed s/epoch (GTX 980)"]) == ["90 (batch 32)", "183 (batch 48)", "—", "113 (batch 64)"]
    assert table.loc["preact_resnet110", "s/epoch here"] == \
        "21.0 (training, NVIDIA H100, batch 64, median of 2)"
    assert table.loc["wrn_16_4", "s/epoch here"] == "7.3 (benchmark, NVIDIA H100, batch 128)"
    assert table.loc["preact_resnet164", "s/epoch here"] == "not measured"


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


def test_reference_numbers_and_sources():
    table = reference.reference_table()
    assert table.loc["preact_resnet110", ["paper_error", "seed_error", "paper_params"]].tolist() == [6.37, 6.38, "1.7M"]
    assert table.loc["preact_resnet164", ["paper_error", "seed_error", "paper_params"]].tolist() == [5.46, 5.66, "1.7M"]
    assert table.loc["wrn_16_4", "paper_error"] == 5.55 and table.loc["wrn_16_4", "paper_params"] == "2.7M"
    assert table.loc["resnet110", "paper_error"] == 6.61 and table.loc["resnet164", "paper_error"] == 5.93
    assert table["paper_source"].dropna().str.len().min() > 10
    assert reference.seed_run_hours()["preact_resnet110"] == pytest.approx(5.0)


# Each quoted number's statistic, as its source states it (He et al. 2016, 3.1: "Throughout this
# paper we report the median accuracy of 5 runs"; He et al. 2015, table 6: 6.61 is the mean of 5;
# the seed quotes 5.55 without one; the seed: "the first and only training run").
PAPER_STATISTICS = {6.37: "median of 5", 5.46: "median of 5", 5.93: "median of 5", 6.61: "mean of 5",
                    5.55: "not stated"}


def test_every_quoted_number_has_the_statistic_its_source_states():
    quoted = [row for row in reference.REFERENCE if row["paper_error"] is not None]
    assert {row["paper_error"]: row["paper_statistic"][0] for row in quoted} == PAPER_STATISTICS
    assert all(row["paper_preprocessing"] for row in quoted)
    assert reference.SEED_STATISTIC == "single run"
    seeds = [row for row in reference.REFERENCE if row["seed_error"] is not None]
    assert {row["seed_error"]: row["seed_recipe"] for row in seeds} == {
        6.38: "seed_code_2016_04", 5.66: "seed_code", 5.41: "seed_code"}
    assert all(row["seed_recipe"] in RECIPES and row["seed_recipe"] in row["seed_note"] for row in seeds)


def test_the_seeds_numbers_and_times_sit_on_the_networks_that_produced_them():
    """The seed's 5.41 and 113 s/epoch belong to its 22-layer wide network, not to WRN-16-4; each time
    is at the batch its code used for that network (ResNet-164: 48)."""
    table = reference.reference_table()
    assert table.loc["seed_wrn_n2_k4", ["seed_error", "seed_seconds_per_epoch", "seed_batch_size"]].tolist() == \
        [5.41, 113, 64]
    assert table.loc["wrn_16_4", ["seed_error", "seed_seconds_per_epoch"]].isna().all()
    assert (table["seed_error"] == 5.41).sum() == 1
    assert table.loc["preact_resnet164", ["seed_seconds_per_epoch", "seed_batch_size"]].tolist() == [183, 48]
    assert table.loc["preact_resnet110", ["seed_seconds_per_epoch", "seed_batch_size"]].tolist() == [90, 32]
    assert reference.seed_run_hours() == pytest.approx(
        {"preact_resnet110": 5.0, "preact_resnet164": 183 * 200 / 3600, "seed_wrn_n2_k4": 113 * 200 / 3600})


def test_html_table_carries_its_id_and_recipe_table_lists_every_recipe():
    html = report.html_table(report.recipe_table(), "recipe-table")
    assert 'id="recipe-table"' in html
    for index, name in enumerate(recipes.RECIPES, 1):  # a column each, its source a note
        assert f'<th class="text">{name.replace("_", "_<wbr>")}</th>' in html
        assert f"<li>{name}: " in html and f"note {index}" in html


def test_run_summary_and_figure_of_one_run(tmp_path):
    run_dir = make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", test_error=5.4, epochs=3)
    summary = report.run_summary(records.read_run(run_dir))
    assert summary.loc["test error (%)", ""] == "5.40"
    figure = report.run_figure(run_dir)
    assert [line.get_ydata()[0] for line in figure.axes[1].get_lines() if line.get_gid() == "paper_error"] == [5.55]


# ---------------------------------------------------------------- scripts/check_book.py

def load_check_book():
    spec = importlib.util.spec_from_file_location("check_book", ROOT / "scripts" / "check_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_page(build, figure="../_images/curves.png", with_file=True, error_table=True):
    page = build / "notebooks" / "results.html"
    page.parent.mkdir(parents=True)
    errors = report.html_table(report.error_table([]), "error-table") if error_table else ""
    speed = report.html_table(pd.DataFrame({"network": ["wrn_16_4"], "parameters (exact, ours)": ["1"]}),
                              "speed-table")
    speed += report.html_table(report.compute_table([]), "compute-table")
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
    ({"figure": "../_images/curves.svg"}, "no training-curve figure"),
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
    assert any("5.41 % under the name WRN-16-4" in note and "2/4/4 units" in note and "≈5.7M" in note
               and "seed_wrn_n2_k4" in note for note in wrn_notes)
    assert [note for note in notes_of(table, "seed_wrn_n2_k4") if "2/4/4" in note] == \
        [note for note in wrn_notes if "2/4/4" in note]


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
    table = report.compute_table(report.load_runs(tmp_path)[0]).set_index("network")
    line = table.loc["preact_resnet110"]
    assert line["seed s/epoch (GTX 980)"] == "90 (batch 32)" and line["seed hours per run"] == "5.0"
    assert line["our s/epoch (median)"] == "22.5" and line["runs"] == 2
    assert line["wall time per run (h, median)"] == "2.5"  # 06:00 to 08:30
    assert line["GPU-hours, all runs"] == f"{200 * (18 + 27) / 3600:.1f}"
    assert table.loc["preact_resnet164", "our device"] == "not run"
    assert "resnet110" not in table.index  # neither the seed's times nor our runs
    assert "wrn_16_4" not in table.index  # the seed's 113 s/epoch are its 22-layer network's
    assert table.loc["seed_wrn_n2_k4", "seed hours per run"] == "6.3"


def test_status_summary_counts_what_the_records_hold(tmp_path):
    assert report.status_summary([]).startswith("The run records hold no complete runs on the full CIFAR-10 data")
    make_run(tmp_path, "preact_resnet20-mirror", arch="preact_resnet20", label="CIFAR-10 (JPEG mirror)",
             dataset="folder:/m", n_train=5000, limit_train=5000, epochs=3)
    make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4")
    make_run(tmp_path, "wrn_16_4-smoke", arch="wrn_16_4", label="synthetic", n_train=256, limit_train=256)
    text = report.status_summary(report.load_runs(tmp_path)[0])
    assert "1 complete run on the full CIFAR-10 data: wrn_16_4 (200 epochs on 50,000 training images)" in text
    assert "1 complete run: preact_resnet20 (3 epochs on 5,000 training images)" in text
    assert "1 other run" in text and "Unfinished" not in text
    assert text.endswith("Still without a complete CIFAR-10 run: preact_resnet110, preact_resnet164.")
    make_run(tmp_path, "preact_resnet110-jpeg-seed0", label="CIFAR-10 (JPEG mirror)", status="running")
    text = report.status_summary(report.load_runs(tmp_path)[0])
    assert "2 other runs" in text
    assert "Unfinished: preact_resnet110 × 1 (2 of 200 epochs on CIFAR-10 (JPEG mirror), NVIDIA H100)." in text


def test_html_table_right_aligns_number_columns_and_lists_the_notes():
    table = pd.DataFrame({"network": ["a", "b"], "error (%)": ["6.50 ± 0.71", "not run"], "n": [2, 0],
                          "each seed": ["6.00 (seed 0), 7.00 (seed 1)", "—"]})
    table.attrs["notes"] = ["first <note>"]
    html = report.html_table(table, "t")
    assert '<th class="text">network</th><th class="num">error (%)</th><th class="num">n</th>' \
           '<th class="text">each seed</th>' in html
    assert '<td class="num">6.50 ± 0.71</td>' in html and '<td class="num">not run</td>' in html
    assert html.endswith('<ol class="table-notes"><li>first &lt;note&gt;</li></ol>')


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
    assert (line[ours], line["n"]) == ("7.50 ± 0.71", 2)
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
    assert list(table["test error (%): mean ± std"]) == ["6.50 ± 0.71", "6.50"]
    assert list(table["n"]) == [2, 1]
