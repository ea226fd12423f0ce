"""The speed benchmark's record: shape, arithmetic and errors (not its timings)."""

import dataclasses
import json
import statistics

import pytest
import torch

from reproresnet.bench import measure as bench
from reproresnet.bench import record as bench_record
from reproresnet.bench.measure import BenchSettings
from reproresnet.config import CIFAR_TRAIN_IMAGES
from reproresnet.models import UnknownArchitectureError

QUIET = {"log": lambda line: None}


# The tests that benchmark (train, and start the baseline's DataLoader worker) are slow.
@pytest.fixture(scope="module")
def cpu_record(tmp_path_factory):
    """One small CPU benchmark of preact_resnet20, both paths, through the command line."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["--archs", "preact_resnet20", "--device", "cpu", "--batch-size", "16", "--steps", "2",
            "--warmup-steps", "1", "--rounds", "2", "--data-batches", "3", "--train-images", "512",
            "--num-workers", "1", "--thread-rules", "--out", str(out), "--quiet"]
    assert bench.main(argv) == 0
    return out


@pytest.mark.slow
def test_record_holds_both_paths_with_positive_numbers(cpu_record):
    record = json.loads(cpu_record.read_text())
    assert record["format"] == bench_record.BENCH_FORMAT and record["complete"] is True
    assert record["device"]["type"] == "cpu" and record["device"]["name"]
    assert (record["batch_size"], record["steps"], record["warmup_steps"]) == (16, 2, 1)
    assert record["settings"]["speedups"] == {"bf16": False, "channels_last": False, "compile": False,
                                              "fused_optimizer": False}  # Speedups.for_device on CPU
    assert {"torch", "torchvision", "python"} <= set(record["versions"]) and "commit" in record["git"]
    assert [(row["arch"], row["path"], row["networks"], row["engine"]) for row in record["rows"]] == [
        ("preact_resnet20", "reproresnet", 1, "eager"), ("preact_resnet20", "stacked-3", 3, "eager"),
        ("preact_resnet20", "baseline", 1, "eager")]
    assert [item["path"] for item in record["unavailable"]] == ["graph"]  # CUDA graphs: not on a CPU
    ours, stacked, base = record["rows"]
    assert ours["speedups"] == record["settings"]["speedups"] and ours["graphs"] == 0  # eager on the CPU
    assert ours["cudagraph_skips"] == 0 and ours["warnings"] == []
    assert (ours["precision"], base["precision"]) == ("fp32", "fp32")  # no TF32 without CUDA
    assert record["settings"]["num_workers"] == 1
    for row in record["rows"]:
        for key in ("seconds_per_epoch", "images_per_second", "data_images_per_second", "warmup_seconds",
                    "tflops", "seconds_per_step"):
            assert row[key] > 0, (row["path"], key)
        assert row["peak_memory_mb"] is None  # no GPU
        assert row["loss_finite"] is True
        # The recipe's epoch is 50,000 images, whatever the synthetic set's size; a step of the
        # stacked path trains 3 networks: 3 x 16 images, and an epoch of each of them.
        n = row["networks"]
        assert row["seconds_per_epoch"] == pytest.approx(n * CIFAR_TRAIN_IMAGES / row["images_per_second"])
        assert row["images_per_second"] == pytest.approx(n * 16 / row["seconds_per_step"])
        low, high = row["seconds_per_step_range"]
        assert low <= row["seconds_per_step"] <= high
        assert row["tflops"] == pytest.approx(3 * row["forward_flops_per_image"] * row["images_per_second"] / 1e12)


@pytest.mark.slow
def test_ratios_are_the_quotients_of_the_rows(cpu_record):
    record = json.loads(cpu_record.read_text())
    *paths, base = record["rows"]
    assert [(r["arch"], r["path"]) for r in record["ratios"]] == [("preact_resnet20", p["path"]) for p in paths]
    for ours, ratio in zip(paths, record["ratios"]):
        assert ratio["step_speedup"] == pytest.approx(ours["images_per_second"] / base["images_per_second"])
        assert ratio["data_speedup"] == pytest.approx(ours["data_images_per_second"] / base["data_images_per_second"])


@pytest.mark.slow
def test_main_prints_the_table(cpu_record, capsys):
    record = json.loads(cpu_record.read_text())
    table = bench_record.format_bench(record)
    assert "preact_resnet20" in table and "reproresnet" in table and "baseline" in table and "stacked-3" in table
    assert all(f"{ratio['step_speedup']:.2f}x" in table for ratio in record["ratios"])
    assert "graph        not available" in table


@pytest.mark.slow
def test_thread_rules_alternate_in_rounds_with_the_load_beside_each(cpu_record):
    record = json.loads(cpu_record.read_text())
    rules = record["thread_rules"]
    assert [row["rule"] for row in rules] == list(bench.thread_rules(torch.get_num_threads()))
    assert rules[0]["rule"] == bench_record.FREE_CORES and record["load_at_start"] >= 0
    for row in rules:
        assert len(row["threads"]) == len(row["load_averages"]) == len(row["round_seconds"]) == 2  # --rounds 2
        assert all(load >= 0 for load in row["load_averages"]) and min(row["threads"]) >= 1
        assert row["images_per_second"] == pytest.approx(16 / statistics.median(row["round_seconds"]))
    assert [r["rule"] for r in record["thread_ratios"]] == [row["rule"] for row in rules[1:]]
    assert "CPU thread rules" in bench_record.format_bench(record)


@pytest.mark.slow
def test_real_epochs_include_the_partial_batch(tmp_path):
    """epochs=1 runs train_one_epoch over the whole synthetic set: 5 full batches of 16 and one of 8."""
    record = bench.benchmark(BenchSettings(archs=("preact_resnet20",), device="cpu", batch_size=16, steps=1,
                                           warmup_steps=0, out=str(tmp_path / "b.json"), epochs=1, baseline=False, stack=1,
                                           num_workers=0, train_images=88, data_batches=2), **QUIET)
    (row,) = record["rows"]
    (epoch,) = row["epochs"]
    assert epoch["seconds"] > 0 and epoch["compiles"] in (0, None)  # nothing compiled on the CPU path
    assert epoch["images_per_second"] == pytest.approx(88 / epoch["seconds"])
    assert record["ratios"] == []  # no baseline, no ratio


def test_unknown_architecture_is_a_clear_error_before_any_work(tmp_path, capsys):
    out = tmp_path / "b.json"
    with pytest.raises(UnknownArchitectureError, match=r"unknown architecture\(s\) 'preact_resnet_nope'.*valid: .*"
                                                       r"preact_resnet110"):
        bench.benchmark(BenchSettings(archs=("preact_resnet20", "preact_resnet_nope"), device="cpu", out=str(out)),
                        **QUIET)
    assert not out.exists()
    assert bench.main(["--archs", "preact_resnet_nope", "--device", "cpu", "--out", str(out)]) == 2
    assert "unknown architecture(s) 'preact_resnet_nope'" in capsys.readouterr().err
    assert not out.exists()


def test_bad_settings_are_clear_errors(tmp_path):
    base = BenchSettings(archs=("preact_resnet20",), device="cpu", out=str(tmp_path / "b.json"))
    for changes, message in [({"steps": 0}, "steps=0 is not valid"),
                             ({"batch_size": 64, "train_images": 100}, "too few batches"),
                             ({"compile_mode": "fast"}, "compile_mode='fast' is not valid")]:
        with pytest.raises(ValueError, match=message):
            bench.benchmark(dataclasses.replace(base, **changes), **QUIET)
    assert not (tmp_path / "b.json").exists()


def test_cpu_device_slug():
    assert bench.device_slug(torch.device("cpu")) == "cpu"


def test_each_network_is_timed_with_the_recipe_of_its_paper():
    assert [bench.paper_recipe(arch) for arch in ("preact_resnet110", "resnet164", "wrn_16_4", "wrn_28_10",
                                                  "seed_wrn_n2_k4")] == ["he2016", "he2016", "wrn2016", "wrn2016",
                                                                         "he2016"]


def test_device_script_summary_imports_resolve():
    """bench/device.sh's summary step imports only names the package still has there."""
    import re
    from pathlib import Path
    script = (Path(__file__).resolve().parents[1] / "bench" / "device.sh").read_text()
    imports = re.findall(r"^from (reproresnet[\w.]*) import (.+)$", script, re.MULTILINE)
    assert imports
    for module, names in imports:
        exec(f"from {module} import {names}", {})


def test_thread_rules_fixed_at_one_count_are_timed_once(monkeypatch):
    monkeypatch.setattr(bench, "usable_cores", lambda: 4)
    monkeypatch.setattr(bench, "load_average", lambda: 2.5)
    rules = bench.thread_rules(torch_default=4)
    assert {name: rule() for name, rule in rules.items()} == {"free cores": 2, "torch default = all cores": 4}
    rules = bench.thread_rules(torch_default=2)
    assert {name: rule() for name, rule in rules.items()} == {"free cores": 2, "torch default": 2, "all cores": 4}
