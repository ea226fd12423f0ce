"""The book's tables and figures, from fabricated run directories (nothing is trained)."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from reproresnet import records, reference, report

ROOT = Path(__file__).resolve().parent.parent


def make_run(results, name, *, arch="preact_resnet110", label="CIFAR-10", status="complete", test_error=6.0,
             seed=0, n_train=50_000, limit_train=None, recipe="seed", epochs=200, device="NVIDIA H100",
             seconds_per_epoch=20.0, metric_rows=None):
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
                   "seed": seed, "dataset": "cifar10" if label.startswith("CIFAR") else "synthetic",
                   "limit_train": limit_train, "limit_test": None, "val_size": 0, "device": "auto"},
        "recipe": {"name": recipe, "batch_size": 64 if recipe == "seed" else 128},
        "data": {"dataset": "cifar10", "label": label, "n_train": n_train, "n_val": 0, "n_test": 10_000},
        "device": {"type": "cuda", "name": device, "speedups": {}},
        "params": 1_730_522, "epochs_planned": epochs, "epochs_done": done, "final": final, "message": None,
    }
    (run_dir / records.RUN_FILE).write_text(json.dumps(record))
    rows = metric_rows or [{"epoch": e, "train_loss": 2.0 / e, "test_error": test_error + 10 / e}
                           for e in range(1, done + 1)]
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
    line = row(report.error_table(runs), "preact_resnet110")
    assert line["this project"] == "6.50 ± 0.71"  # sample standard deviation
    assert line["n"] == 2
    assert line["original paper"] == "6.37" and line["seed reproduction"] == "6.38"
    assert line["epochs"] == "200"
    assert "NVIDIA H100" in line["device"] and "NVIDIA H200" in line["device"]
    assert line["data set"].startswith("CIFAR-10 (50,000 train")


def test_one_run_shows_its_error_without_a_spread(tmp_path):
    make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", test_error=5.123)
    line = row(report.error_table(report.load_runs(tmp_path)[0]), "wrn_16_4")
    assert line["this project"] == "5.12" and line["n"] == 1


def test_network_without_runs_shows_not_run(tmp_path):
    make_run(tmp_path, "preact_resnet110-seed0")
    table = report.error_table(report.load_runs(tmp_path)[0])
    for network in ("preact_resnet164", "wrn_16_4", "resnet110", "resnet164"):
        assert row(table, network)["this project"] == "not run"
        assert row(table, network)["n"] == 0
    assert list(table["network"][:3]) == list(reference.REPRODUCED)


def test_empty_results_every_network_not_run(tmp_path):
    runs, problems = report.load_runs(tmp_path / "does-not-exist")
    assert runs == [] and problems == []
    table = report.error_table(runs)
    assert set(table["this project"]) == {"not run"}
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
    assert row(errors, "preact_resnet110")["this project"] == "not run"
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
    assert row(report.error_table(runs), "preact_resnet164")["this project"] == "failed"
    other = report.other_runs_table(runs)
    assert other.iloc[0]["status"] == "diverged"
    assert "diverged" in other.iloc[0]["not in the CIFAR-10 table because"]


def test_diverged_seed_is_counted_beside_the_complete_ones(tmp_path):
    make_run(tmp_path, "preact_resnet164-seed0", arch="preact_resnet164", test_error=5.5)
    make_run(tmp_path, "preact_resnet164-seed1", arch="preact_resnet164", seed=1, status="diverged")
    line = row(report.error_table(report.load_runs(tmp_path)[0]), "preact_resnet164")
    assert line["this project"] == "5.50 (1 failed)" and line["n"] == 1


def test_unfinished_cifar10_run_is_in_progress_and_shows_its_last_epoch(tmp_path):
    make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", status="running",
             metric_rows=[{"epoch": 1, "train_loss": 2.0, "test_error": 50.0},
                          {"epoch": 2, "train_loss": 1.5, "test_error": 40.25}])
    runs, _ = report.load_runs(tmp_path)
    assert row(report.error_table(runs), "wrn_16_4")["this project"] == "in progress"
    other = report.other_runs_table(runs)
    assert other.iloc[0]["test error (%)"] == "40.25 (epoch 2)"
    assert other.iloc[0]["epochs (done/planned)"] == "2/200"


def test_runs_with_different_settings_are_not_averaged_together(tmp_path):
    make_run(tmp_path, "a", recipe="seed", test_error=6.0)
    make_run(tmp_path, "b", recipe="he2016", test_error=7.0, epochs=164)
    table = report.error_table(report.load_runs(tmp_path)[0])
    lines = table[table["network"] == "preact_resnet110"]
    assert sorted(lines["this project"]) == ["6.00", "7.00"]
    assert sorted(lines["epochs"]) == ["164", "200"]


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
    assert row(report.error_table(runs), "preact_resnet110")["this project"] == "6.25"
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


def test_curves_of_a_synthetic_run_have_no_paper_line_and_say_so(tmp_path):
    make_run(tmp_path, "preact_resnet110-smoke", label="synthetic", n_train=1000, limit_train=1000, epochs=2)
    runs, _ = report.load_runs(tmp_path)
    figure = report.curves_for_network(runs, "preact_resnet110")
    assert "not a CIFAR-10 result" in figure._suptitle.get_text()
    assert not [line for line in figure.axes[1].get_lines() if line.get_gid() == "paper_error"]
    assert report.curves_for_network(runs, "wrn_16_4") is None


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
    assert list(table.index) == list(reference.REPRODUCED)
    assert table.loc["preact_resnet164", "parameters (paper)"] == "1.7M"
    assert table.loc["preact_resnet164", "parameters (exact, ours)"] == "1,703,258"  # the authors' log
    assert table.loc["wrn_16_4", "parameters (paper)"] == "2.7M"
    seed_column = "s/epoch seed (GTX 980, batch 64)"
    assert list(table[seed_column]) == ["90", "183", "113"]
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
    assert table.loc["wrn_16_4", ["paper_error", "seed_error", "paper_params"]].tolist() == [5.55, 5.41, "2.7M"]
    assert table.loc[list(reference.REPRODUCED), "seed_seconds_per_epoch"].tolist() == [90, 183, 113]
    assert table.loc["resnet110", "paper_error"] == 6.61 and table.loc["resnet164", "paper_error"] == 5.93
    assert table["paper_source"].str.len().min() > 10
    assert reference.seed_run_hours()["preact_resnet110"] == pytest.approx(5.0)


def test_html_table_carries_its_id_and_recipe_table_lists_every_recipe():
    html = report.html_table(report.recipe_table(), "recipe-table")
    assert 'id="recipe-table"' in html
    for name in ("seed", "he2016", "wrn2016"):
        assert f"<td>{name}</td>" in html


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
