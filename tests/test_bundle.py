"""Bundles: bounded parts that restore byte for byte; checked whole before anything is written;
never rolling a run back; refusing tampered manifests and checkpoints that would run code; and a
kill at every file operation of `unbundle`, after which unbundling again completes it."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import digest, fake_record, run_cli
from faults import Faults, Killed
from reproresnet.campaign import bundle as bundling
from reproresnet import records, rundir
from reproresnet.campaign import slot as campaign


def write_checkpoint(path: Path, epochs: int, status: str = "running", size: int = 1000, seed: int = 0) -> None:
    """A checkpoint as training writes it, as far as a bundle cares: weights (`size` random,
    incompressible bytes), one metrics row per epoch, its record, and the other fields that make
    it a checkpoint of a run (rundir.CHECKPOINT_FIELDS)."""
    weights = torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    record = fake_record(status=status, epochs_done=epochs)
    rundir.write_checkpoint(path, {"model": {"w": weights}, "optimizer": {}, "config": record["config"],
                                    "started": "2026-01-01T00:00:00+00:00",
                                    "metrics": [{"epoch": e} for e in range(1, epochs + 1)], "record": record})


def write_run(run: Path, epochs: int, status: str = "running", checkpoint: bool = True, **kwargs) -> None:
    run.mkdir(parents=True, exist_ok=True)
    if checkpoint:
        write_checkpoint(run / records.CHECKPOINT_FILE, epochs, status, **kwargs)
    rundir.write_metrics(run / records.METRICS_FILE, [{"epoch": e, "test_error": 50.0 - e} for e in range(1, epochs + 1)])
    rundir.write_json(run / records.RUN_FILE, fake_record(status=status, epochs_done=epochs))


def _campaign_dir(root: Path, big: int = 3 * 2**20) -> Path:
    """A campaign directory: an unfinished run (checkpoint), a complete one, locks, temporaries."""
    write_run(root / "a-seed0", 1, size=big)
    write_run(root / "b-seed0", 2, status="complete", size=big, seed=1)
    for run in ("a-seed0", "b-seed0"):
        (root / run / ".lock").write_text("pid 1")
        (root / run / f"{rundir.TEMP_PREFIX}checkpoint.pt.x1{rundir.TEMP_SUFFIX}").write_bytes(b"half")
    (root / campaign.STATE_DIR).mkdir()
    (root / campaign.STATE_DIR / "selfcheck.json").write_text("{}\n")
    return root


def files_of(root: Path) -> dict[str, str]:
    """Every file under `root` but locks and our temporaries: relative path -> sha256."""
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock" and not rundir.is_temporary(p.name)}


# ---------------------------------------------------------------- round trip and limits

def test_bundle_round_trip_is_byte_identical_and_within_the_limits(tmp_path):
    src = _campaign_dir(tmp_path / "campaign")
    manifest = bundling.bundle(src, tmp_path / "out", max_file_bytes=2**20, max_total_bytes=8 * 2**20)
    out_files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out_files == ["bundle.json"] + [f"campaign.part{i:02d}" for i in range(len(manifest["parts"]))]
    assert len(manifest["parts"]) == 4  # 3 MiB of random bytes do not compress: split in 1 MiB parts
    assert all((tmp_path / "out" / p).stat().st_size <= 2**20 for p in out_files)
    bundled = {entry["path"] for entry in manifest["files"]}
    assert bundled == {"a-seed0/run.json", "a-seed0/metrics.csv", "a-seed0/checkpoint.pt", "b-seed0/run.json",
                       "b-seed0/metrics.csv", "_campaign/selfcheck.json"}  # no locks, temporaries, or the
    #                                                                        complete run's checkpoint
    done = bundling.unbundle(tmp_path / "out", tmp_path / "home")
    assert set(done["restored"]) == bundled and done["skipped"] == {}
    assert all(digest(src / rel) == digest(tmp_path / "home" / rel) for rel in bundled)
    assert not [p for p in tmp_path.rglob("*") if "unbundle" in p.name]


def test_bundle_with_the_default_limits_splits_a_large_checkpoint(tmp_path):
    src = _campaign_dir(tmp_path / "campaign", big=20 * 2**20)
    manifest = bundling.bundle(src, tmp_path / "out")
    sizes = [(tmp_path / "out" / p["name"]).stat().st_size for p in manifest["parts"]]
    assert len(sizes) == 2 and max(sizes) <= 16 * 2**20 and sum(sizes) <= 64 * 2**20
    bundling.unbundle(tmp_path / "out", tmp_path / "home")
    assert digest(tmp_path / "home/a-seed0/checkpoint.pt") == digest(src / "a-seed0/checkpoint.pt")


def test_a_bundle_over_the_limits_is_refused_and_leaves_the_earlier_one(tmp_path):
    src = _campaign_dir(tmp_path / "campaign")
    bundling.bundle(src, tmp_path / "out")
    before = files_of(tmp_path / "out")
    with pytest.raises(bundling.BundleError, match=r"over the limit .*a-seed0/checkpoint.pt"):
        bundling.bundle(src, tmp_path / "out", max_files=3, max_file_bytes=2**20)
    assert files_of(tmp_path / "out") == before


def test_a_bundle_into_its_own_directory_leaves_its_earlier_parts_out(tmp_path):
    src = _campaign_dir(tmp_path / "campaign", big=1000)
    first = bundling.bundle(src, src / "out")
    second = bundling.bundle(src, src / "out")
    assert not [f["path"] for f in first["files"] + second["files"] if f["path"].startswith("out/")]
    assert [f["path"] for f in first["files"]] == [f["path"] for f in second["files"]]
    assert sum(p["bytes"] for p in second["parts"]) == pytest.approx(sum(p["bytes"] for p in first["parts"]), rel=0.05)


def test_bundle_and_unbundle_commands(tmp_path, capsys):
    from reproresnet import cli
    src = _campaign_dir(tmp_path / "campaign", big=1000)
    assert cli.main(["bundle", str(src), "--to", str(tmp_path / "out")]) == 0
    assert cli.main(["unbundle", str(tmp_path / "out"), "--to", str(tmp_path / "home")]) == 0
    assert "restored 6 files" in capsys.readouterr().out
    assert cli.main(["unbundle", str(tmp_path / "nothing"), "--to", str(tmp_path / "home")]) == 2
    assert "no complete bundle" in capsys.readouterr().err


# ---------------------------------------------------------------- never rolling a run back

def test_an_older_bundle_changes_no_run_that_is_further_along_and_says_so(tmp_path, capsys):
    from reproresnet import cli
    src = _campaign_dir(tmp_path / "campaign", big=1000)
    bundling.bundle(src, tmp_path / "old")
    home = tmp_path / "home"
    bundling.unbundle(tmp_path / "old", home)
    write_run(home / "a-seed0", 2, status="complete", checkpoint=False)  # a-seed0 completed since
    (home / "a-seed0" / records.CHECKPOINT_FILE).unlink()
    write_run(home / "c-seed0", 3)                                      # its record lost, its checkpoint
    (home / "c-seed0" / records.RUN_FILE).unlink()                      # further along than the bundle's
    write_run(src / "c-seed0", 2)
    bundling.bundle(src, tmp_path / "old")
    before = files_of(home)
    capsys.readouterr()
    assert cli.main(["unbundle", str(tmp_path / "old"), "--to", str(home)]) == 0
    out = capsys.readouterr().out
    assert files_of(home) == before
    assert "skipped a-seed0: the run here is further along (2 epochs done, complete) than the bundle's " \
           "(1 epochs done)" in out
    assert "skipped c-seed0: the run here is further along (3 epochs done)" in out
    assert "skipped b-seed0" not in out  # as far along as the bundle's: restored (identical)


def test_an_older_bundle_keeps_the_campaigns_newer_files_and_adds_only_what_is_missing(tmp_path):
    src = _campaign_dir(tmp_path / "campaign", big=1000)
    bundling.bundle(src, tmp_path / "old")
    (src / campaign.STATE_DIR / "slot-1.log").write_text("the first call\n")
    bundling.bundle(src, tmp_path / "old")
    home = tmp_path / "home"
    shutil.copytree(src, home, ignore=shutil.ignore_patterns("slot-1.log"))
    write_run(home / "a-seed0", 2)  # trained on by a later call, whose campaign state changed too
    (home / campaign.STATE_DIR / "selfcheck.json").write_text('{"chosen": "later"}\n')
    done = bundling.unbundle(tmp_path / "old", home)
    assert (home / campaign.STATE_DIR / "selfcheck.json").read_text() == '{"chosen": "later"}\n'
    assert (home / campaign.STATE_DIR / "slot-1.log").read_text() == "the first call\n"
    assert done["skipped"][f"{campaign.STATE_DIR}/selfcheck.json"].startswith("kept")
    assert rundir.how_far(home / "a-seed0") == (2, False)


def test_a_newer_bundle_replaces_an_older_run_and_drops_its_stale_checkpoint(tmp_path):
    src = tmp_path / "campaign"
    write_run(src / "a-seed0", 2, status="complete", checkpoint=False)
    bundling.bundle(src, tmp_path / "new")
    home = tmp_path / "home"
    write_run(home / "a-seed0", 1)
    (home / "a-seed0" / "train.ipynb").write_text("{}")  # not the bundle's: left alone
    done = bundling.unbundle(tmp_path / "new", home)
    assert done["skipped"] == {} and rundir.how_far(home / "a-seed0") == (2, True)
    assert not (home / "a-seed0" / records.CHECKPOINT_FILE).exists()
    assert (home / "a-seed0" / "train.ipynb").exists()


def test_unbundle_takes_each_run_directorys_lock(tmp_path):
    src = _campaign_dir(tmp_path / "campaign", big=1000)
    bundling.bundle(src, tmp_path / "out")
    home = tmp_path / "home"
    write_run(home / "a-seed0", 0)
    before = files_of(home / "a-seed0")
    with rundir.run_dir_lock(home / "a-seed0"):  # a run training there
        done = bundling.unbundle(tmp_path / "out", home)
    assert "in use" in done["skipped"]["a-seed0"] and files_of(home / "a-seed0") == before
    assert (home / "b-seed0" / records.RUN_FILE).exists()


# ---------------------------------------------------------------- tampered bundles: one line, nothing created

def _edit_manifest(out: Path, edit) -> None:
    path = out / "bundle.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(edit(manifest)))


def _listed(manifest: dict, path: str) -> dict:
    manifest["files"].append({"path": path, "bytes": 1, "sha256": "0" * 64})
    return manifest


@pytest.mark.parametrize("tamper, words", [
    pytest.param(lambda out: _edit_manifest(out, lambda m: _listed(m, "../../x")), ["'../../x'", "relative path"],
                 id="parent-path"),
    pytest.param(lambda out: _edit_manifest(out, lambda m: _listed(m, "/tmp/x")), ["'/tmp/x'", "relative path"],
                 id="absolute-path"),
    pytest.param(lambda out: _edit_manifest(out, lambda m: _listed(m, "a-seed0/extra.txt")),
                 ["missing ['a-seed0/extra.txt']"], id="listed-file-not-in-the-bundle"),
    pytest.param(lambda out: _edit_manifest(out, lambda m: {k: v for k, v in m.items() if k != "parts"}),
                 ["'parts' must be a list"], id="no-parts"),
    pytest.param(lambda out: _edit_manifest(out, lambda m: [m]), ["format 'list'"], id="a-json-list"),
    pytest.param(lambda out: _edit_manifest(out, lambda m: {**m, "parts": [{**m["parts"][0], "name": "../x"}]}),
                 ["part '../x' is not a file name"], id="part-outside"),
    pytest.param(lambda out: (out / "campaign.part01").unlink(), ["campaign.part01 missing"], id="part-missing"),
    pytest.param(lambda out: (out / "campaign.part00").write_bytes(b"x"), ["campaign.part00 does not match"],
                 id="part-damaged"),
])
def test_a_tampered_or_incomplete_bundle_is_refused_in_one_line_creating_nothing(tmp_path, capsys, tamper, words):
    src = _campaign_dir(tmp_path / "campaign", big=2 * 2**20)
    bundling.bundle(src, tmp_path / "out", max_file_bytes=2**20)
    tamper(tmp_path / "out")
    code, err = run_cli(capsys, ["unbundle", str(tmp_path / "out"), "--to", str(tmp_path / "home" / "results")])
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("python -m reproresnet unbundle: error:") and all(word in err for word in words), err
    assert not (tmp_path / "home").exists()


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.parametrize("name", [records.CHECKPOINT_FILE, records.BEST_FILE])
def test_a_bundled_checkpoint_that_would_run_code_is_refused_unrun(tmp_path, capsys, name):
    """The manifest's sha256 values are the bundle's own: only the content can be checked."""
    src, marker = _campaign_dir(tmp_path / "campaign", big=1000), tmp_path / "ran"
    torch.save({"model": _RunsCode(marker), "metrics": []}, src / "a-seed0" / name)
    bundling.bundle(src, tmp_path / "out")
    code, err = run_cli(capsys, ["unbundle", str(tmp_path / "out"), "--to", str(tmp_path / "home")])
    assert code == 2 and f"a-seed0/{name} is refused" in err and "could run code" in err, err
    assert not marker.exists() and not (tmp_path / "home").exists()


# ---------------------------------------------------------------- a kill at every file operation

def test_a_kill_at_every_file_operation_of_unbundle_then_unbundling_again_completes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # a killed unbundle's staging stays there
    (tmp_path / "tmp").mkdir()
    src = tmp_path / "campaign"
    write_run(src / "a-seed0", 3, status="complete", checkpoint=False)  # completed: drops home's checkpoint
    write_run(src / "b-seed0", 2, seed=1)                               # advanced
    write_run(src / "c-seed0", 1, seed=2)                               # new here
    (src / "a-seed0" / "campaign.log").write_text("log\n")
    (src / campaign.STATE_DIR).mkdir()
    (src / campaign.STATE_DIR / "campaign.json").write_text("{}\n")
    bundling.bundle(src, tmp_path / "bundle")
    home = tmp_path / "home"
    write_run(home / "a-seed0", 2, seed=3)
    write_run(home / "b-seed0", 1, seed=4)
    before = {run: rundir.how_far(home / run) for run in ("a-seed0", "b-seed0", "c-seed0")}

    whole = tmp_path / "whole"
    shutil.copytree(home, whole)
    with pytest.MonkeyPatch.context() as patch:
        faults = Faults().patch_files(patch)
        bundling.unbundle(tmp_path / "bundle", whole)
    after = {run: rundir.how_far(whole / run) for run in before}
    assert after == {"a-seed0": (3, True), "b-seed0": (2, False), "c-seed0": (1, False)}
    expected = files_of(whole)
    assert records.CHECKPOINT_FILE not in {Path(rel).name for rel in expected if rel.startswith("a-seed0")}
    writes = [op for op in faults.operations if op.startswith("write")]
    assert len(writes) == 10 and len(faults.operations) > 2 * len(writes)

    for n in range(1, len(faults.operations) + 1):
        killed = tmp_path / f"killed-at-{n}"
        shutil.copytree(home, killed)
        with pytest.MonkeyPatch.context() as patch:
            Faults(kill_at=n).patch_files(patch)
            with pytest.raises(Killed):
                bundling.unbundle(tmp_path / "bundle", killed)
        for run in before:  # each run as it was or as the bundle has it, never a mix
            assert rundir.how_far(killed / run) in (before[run], after[run]), (n, faults.operations[n - 1])
        done = bundling.unbundle(tmp_path / "bundle", killed)
        assert done["skipped"] == {} and files_of(killed) == expected, (n, faults.operations[n - 1])
        assert not [p for p in killed.glob("*-seed0/*") if rundir.is_temporary(p.name)]


def test_the_committed_campaign_bundle_restores_and_its_checkpoints_load_as_plain_values(tmp_path):
    """The next GPU slot resumes these runs: their checkpoints load with weights_only=True (those
    written before checkpoints held their record get it from run.json)."""
    committed = Path(__file__).resolve().parents[1] / bundling.COMMITTED
    if not (committed / bundling.MANIFEST).exists():
        pytest.skip("no campaign bundle is committed (bench/README.md: campaign-bundle/, removed)")
    done = bundling.unbundle(committed, tmp_path / "runs")  # checks that every checkpoint loads
    run_dirs = sorted({(tmp_path / "runs" / rel).parent for rel in done["restored"]
                       if rel.endswith(records.CHECKPOINT_FILE)})
    assert run_dirs and done["skipped"] == {}
    for run_dir in run_dirs:
        record = records.read_run(run_dir)
        checkpoint = rundir.load_checkpoint(run_dir / records.CHECKPOINT_FILE, record)
        assert checkpoint["record"].epochs_done == len(checkpoint["metrics"]) >= record.epochs_done
        assert checkpoint["record"].config == record.config == checkpoint["config"]


def test_unbundle_loads_each_bundled_checkpoint_once(tmp_path, monkeypatch):
    """The check of the bundle's checkpoints also tells how far each bundled run got: none is
    loaded a second time to compare it with the run here."""
    src = tmp_path / "campaign"
    write_run(src / "a-seed0", 2)
    write_run(src / "b-seed0", 1)
    bundling.bundle(src, tmp_path / "bundle")
    home = tmp_path / "home"
    write_run(home / "a-seed0", 3)  # further along: kept
    write_run(home / "b-seed0", 1)
    loads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda path, *args, **kwargs: loads.append(str(path)) or load(path, *args,
                                                                                                      **kwargs))
    done = bundling.unbundle(tmp_path / "bundle", home)
    assert "a-seed0" in done["skipped"] and rundir.how_far(home / "b-seed0") == (1, False)
    staged = [path for path in loads if "reproresnet-unbundle-" in path]
    assert sorted(staged) == sorted(set(staged)) and len(staged) == 2


def test_a_stopped_run_is_resumable_only_where_its_checkpoint_is_kept(tmp_path):
    results = tmp_path / "repo" / "results"
    for name in ("bundled", "beside", "gone"):
        write_run(results / name, 5, status="stopped", checkpoint=False)
    (results / "beside" / records.CHECKPOINT_FILE).write_bytes(b"weights")
    committed = tmp_path / "repo" / bundling.COMMITTED
    committed.mkdir()
    (committed / bundling.MANIFEST).write_text(json.dumps({"files": [
        {"path": "bundled/checkpoint.pt"}, {"path": "gone/metrics.csv"}, {"path": "_campaign/campaign.json"}]}))
    kept = {name: bundling.checkpoint_kept(results / name) for name in ("bundled", "beside", "gone")}
    assert kept == {"bundled": True, "beside": True, "gone": False}
    assert bundling.bundled_checkpoints(tmp_path / "nowhere") == frozenset()
