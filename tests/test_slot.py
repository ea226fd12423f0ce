"""A GPU slot's script on a CPU: `bench/campaign.sh` finds the data where bench/README.md's
device calls put it, or stops before anything is written, saying where it looked; its
default limits fit a 15-minute slot. The script runs in a copy of the checkout with a
stand-in python that records what it is asked to run (the campaign itself is tested in
test_campaign.py)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from reproresnet.campaign import probe

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = "data/cifar10-jpeg.tar.gz"


def test_the_script_checks_the_archive_against_the_sha256_the_book_gives():
    script = (REPO / "bench" / "campaign.sh").read_text()
    book = (REPO / "book" / "methods.md").read_text()
    [in_script] = re.findall(r"CAMPAIGN_MIRROR_SHA256:-([0-9a-f]{64})", script)
    assert in_script in re.findall(r"sha256\s+`([0-9a-f]{64})`", book)


def _checkout(tmp_path: Path) -> Path:
    """A copy of the checkout as the device receives it (the script, its repository root) and a
    stand-in python that logs each call's arguments."""
    root = tmp_path / "checkout"
    (root / "bench").mkdir(parents=True)
    shutil.copy(REPO / "bench" / "campaign.sh", root / "bench")
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "python.log"}\n')
    python.chmod(0o755)
    return root


def _run(root: Path, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    environment.update(PYTHON=str(root.parent / "python"), OUT=str(root.parent / "out"), **env)
    return subprocess.run(["bash", str(root / "bench" / "campaign.sh")], env=environment, capture_output=True,
                          text=True, timeout=60)


def _calls(root: Path) -> list[str]:
    log = root.parent / "python.log"
    return log.read_text().splitlines() if log.exists() else []


def _mirror(path: Path) -> str:
    """A tiny archive of the mirror's layout at `path`; returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name in ("train/cat/0001.jpg", "test/cat/0001.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"jpg"))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_without_the_data_the_script_stops_at_once_saying_where_it_looked(tmp_path):
    root = _checkout(tmp_path)
    result = _run(root)
    assert result.returncode == 2
    assert f"{root}/data/cifar10-jpeg/{{train,test}}" in result.stderr and f"{root}/{ARCHIVE}" in result.stderr
    assert "bench/README.md" in result.stderr
    assert _calls(root) == [] and not (root / "runs").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_archive_that_is_not_the_mirror_is_refused_before_anything_is_written(tmp_path):
    root = _checkout(tmp_path)
    (root / "data").mkdir()
    (root / ARCHIVE).write_bytes(b"not the mirror")
    result = _run(root)
    assert result.returncode == 2
    assert f"{root}/{ARCHIVE} has sha256 {hashlib.sha256(b'not the mirror').hexdigest()}" in result.stderr
    assert "not the mirror's 1eeb7533" in result.stderr
    assert _calls(root) == [] and not (root / "runs").exists() and not (root / "data" / "cifar10-jpeg").exists()


@pytest.mark.slow
def test_the_carried_archive_is_unpacked_and_the_calls_fit_a_fifteen_minute_slot(tmp_path):
    """Call 1: the archive where bench/README.md puts it is unpacked into data/cifar10-jpeg and
    the campaign reads it there, within the first call's default limit (550 s, for timeout_s
    570). Call 2, on the same machine: the data is found unpacked, the campaign is continued,
    within the second call's default (130 s)."""
    root = _checkout(tmp_path)
    sha = _mirror(root / ARCHIVE)
    first = _run(root, CAMPAIGN_MIRROR_SHA256=sha)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (root / "data" / "cifar10-jpeg" / "train" / "cat" / "0001.jpg").read_bytes() == b"jpg"
    assert not (root / "data" / "cifar10-jpeg.partial").exists()
    campaign, bundle = _calls(root)
    assert "--dataset folder:data/cifar10-jpeg" in campaign and bundle.startswith("-m reproresnet bundle runs/campaign")
    budget = int(re.search(r"--budget (\d+)", campaign)[1])
    assert 500 <= budget <= 550 - 45  # less the bundle's 30 s and 15 s for the exit
    (root / "runs" / "campaign" / "_campaign" / "campaign.json").write_text("{}")  # what the campaign leaves
    (root / ARCHIVE).unlink()  # not needed again: the machine keeps the unpacked mirror
    second = _run(root)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "the mirror already unpacked in data/cifar10-jpeg" in second.stdout
    assert "continuing the campaign in runs/campaign" in second.stdout
    budget = int(re.search(r"--budget (\d+)", _calls(root)[2])[1])
    assert 80 <= budget <= 130 - 45
    assert len(list((root / "runs" / "campaign" / "_campaign").glob("slot-*.log"))) >= 1


# ---------------------------------------------------------------- the device probe (reproresnet/campaign/probe.py)


class ReplayByCalling:
    """CUDA graphs' stand-in on a CPU: a replay calls the captured step again."""

    def warm_up(self, step):
        return step()

    def capture(self, step):
        return step


class MaskBakedIn(ReplayByCalling):
    """A 'graph' that replays the mask of its capture: the generator's state is not advanced."""

    def capture(self, step):
        state = torch.get_rng_state()

        def replay():
            torch.set_rng_state(state)
            return step()
        return replay


def test_the_capture_check_reads_back_each_replays_lr_and_mask():
    record = probe.capture_check(torch.device("cpu"), ReplayByCalling(), n=4096)
    assert record["ok"] and record["lr_ok"] and record["fresh_masks"]
    assert record["lr_read"] == pytest.approx(list(probe.LRS), rel=1e-4)
    assert all(0.4 < fraction < 0.6 for fraction in record["mask_changed"])  # 2p(1-p) for p = 0.5


def test_the_capture_check_fails_a_graph_that_baked_in_its_mask_or_never_saw_the_new_lr(monkeypatch):
    baked = probe.capture_check(torch.device("cpu"), MaskBakedIn(), n=4096)
    assert not baked["ok"] and baked["lr_ok"] and not baked["fresh_masks"] and baked["mask_changed"][1:] == [0, 0, 0]
    monkeypatch.setattr(probe.Engine, "set_lr", lambda engine, lr: None)  # the lr as captured, never changed
    stale = probe.capture_check(torch.device("cpu"), ReplayByCalling(), n=4096)
    assert not stale["ok"] and not stale["lr_ok"] and stale["fresh_masks"]
    assert stale["lr_read"][2:] == pytest.approx([probe.LRS[0]] * 2, rel=1e-4)


def test_the_convolutions_probed_are_the_plans_networks_stage_by_stage_and_timed_both_ways():
    shapes = probe.conv_shapes({"preact_resnet110": 64, "preact_resnet164": 48, "wrn_16_4": 64})
    assert [(s["in"], s["out"], s["kernel"], s["size"]) for s in shapes if s["network"] == "wrn_16_4"] == [
        (64, 64, 3, 32), (128, 128, 3, 16), (256, 256, 3, 8)]
    assert {(s["in"], s["out"], s["kernel"], s["batch"]) for s in shapes if s["network"] == "preact_resnet164"} == {
        (16, 16, 3, 48), (64, 16, 1, 48), (32, 32, 3, 48), (128, 32, 1, 48), (64, 64, 3, 48), (256, 64, 1, 48)}
    assert len(shapes) == 12
    small = {**shapes[0], "batch": 2, "size": 8}
    row = probe.conv_timing(small, "fp32", torch.device("cpu"), k=3, reps=1)
    assert row["grouped_ms"] > 0 and row["separate_ms"] > 0 and row["speedup"] == row["separate_ms"] / row["grouped_ms"]


def test_on_a_cpu_the_probe_records_that_it_needs_cuda():
    record = probe.probe(torch.device("cpu"), {"preact_resnet110": 64})
    assert record["skipped"].startswith("needs CUDA") and record["ok"] is None and record["format"] == probe.FORMAT
    assert probe.format_probe(record) == f"probe: cpu: skipped ({record['skipped']})"


def test_the_probe_record_reads_as_a_table():
    cpu = torch.device("cpu")
    shape = {**probe.conv_shapes({"wrn_16_4": 64})[0], "batch": 2, "size": 8}
    record = {"gpu": "a CPU standing in", "torch": torch.__version__, "seconds": 0.5, "budget": 20,
              "capture": probe.capture_check(cpu, ReplayByCalling(), n=1024),
              "convolutions": [probe.conv_timing(shape, "fp32", cpu, reps=1),
                               {**shape, "precision": "bf16", "ok": False, "error": "RuntimeError: x"}],
              "unmeasured": [shape], "autotune_seconds_total": 0.0}
    lines = probe.format_probe(record).splitlines()
    assert lines[0].startswith("probe: a CPU standing in") and "capture ok: first capture" in lines[0]
    assert lines[2].split()[:4] == ["wrn_16_4", "64->64", "3x3", "@8"] and "RuntimeError: x" in lines[3]
    assert lines[-1].endswith("1 shape(s) left unmeasured (budget 20 s)")


def test_a_probe_that_fails_outside_its_parts_says_so_and_never_raises(monkeypatch):
    """The slot goes on whatever the probe meets: here the device itself cannot be named."""
    def unnamed(device):
        raise RuntimeError("CUDA error: no CUDA-capable device is detected")

    monkeypatch.setattr(torch.cuda, "get_device_name", unnamed)
    benchmark = torch.backends.cudnn.benchmark
    record = probe.probe(torch.device("cuda"), {"preact_resnet110": 64})
    assert record["ok"] is False and record["error"] == "RuntimeError: CUDA error: no CUDA-capable device is detected"
    assert probe.format_probe(record).startswith("probe: cuda: FAILED after ")
    assert torch.backends.cudnn.benchmark == benchmark  # restored
