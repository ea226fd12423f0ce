"""A record is data from elsewhere (a bundle, another machine): its names never become paths
outside the folder a command was given, its strings never become markup in a page, a bundle never
replaces another experiment's run, and no command writes into a folder holding files it did not
write (issue 25). Each case refuses in one line, naming the file, the field and the bad value,
and leaves everything as it was."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
from markdown_it.renderer import RendererHTML
from myst_parser.config.main import MdParserConfig
from myst_parser.parsers.mdit import create_md_parser

from conftest import argv, fake_record, run_cli
from reproresnet import records, rundir
from reproresnet.book import pages as book_pages
from reproresnet.campaign import slot as campaign
from reproresnet.book import report
from reproresnet.campaign import bundle as bundling
from test_bundle import files_of, write_run
from test_report import make_run

HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>", "[x](javascript:alert(3))",
           "{eval-rst}`.. raw:: html`", "$$\\alert$$ $x$", "{{ repository }}", "\n:::{danger}\nboo\n:::\n",
           "```{raw} html\n<b>x</b>\n```", "*a* _b_ ~~c~~ <!-- c --> &amp; &#60;b&#62;", "\\<b\\>", "| a | b |"]


def _first_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- one place reads a record and checks it

@pytest.mark.parametrize("field, value", [
    ("name", "../../README"), ("name", "/etc/passwd"), ("name", "a/b"), ("name", "a\\b"), ("name", ".hidden"),
    ("name", ""), ("name", "nul\0"), ("name", ".."), ("name", "a b"), ("name", 7),
    ("arch", "<img src=x onerror=alert(1)>"), ("arch", ["wrn_16_4"]),
    ("status", "owned"), ("epochs_done", "5"), ("epochs_planned", -1), ("message", {"html": "<b>"}),
    ("data.label", 3.5), ("device.name", ["GPU"]), ("final.test_error", "6%"),
])
def test_a_record_whose_name_or_text_is_not_what_readers_expect_is_refused_naming_field_and_value(
        tmp_path, field, value):
    record = fake_record(name="a-seed0", data={"label": "CIFAR-10"}, device={"name": "GPU"},
                         final={"test_error": 6.0})
    *parents, key = field.split(".")
    (record[parents[0]] if parents else record)[key] = value
    (tmp_path / records.RUN_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError) as refused:
        records.read_run(tmp_path)
    message = str(refused.value)
    assert "\n" not in message and str(tmp_path / records.RUN_FILE) in message and f"'{field}'" in message
    assert repr(value)[:60] in message and "expected" in message


@pytest.mark.parametrize("name", ["preact_resnet110-jpeg-fp32-seed0", "wrn_16_4-seed2", "seed_wrn_n2_k4+x.1",
                                  "_campaign"])
def test_the_names_the_project_writes_are_safe_names(name):
    assert records.is_safe_name(name)


def test_every_committed_record_passes_the_check():
    runs, problems = records.load_runs(Path(__file__).resolve().parents[1] / "results")
    assert runs and problems == []


def test_load_runs_lists_a_hostile_record_as_a_problem_and_reads_the_others(tmp_path):
    make_run(tmp_path, "good-seed0")
    bad = make_run(tmp_path, "bad-seed0")
    record = json.loads((bad / records.RUN_FILE).read_text())
    (bad / records.RUN_FILE).write_text(json.dumps({**record, "name": "../../README"}))
    runs, problems = records.load_runs(tmp_path)
    assert [run.name for run in runs] == ["good-seed0"]
    assert problems[0]["path"] == str(bad / records.RUN_FILE) and "'../../README'" in problems[0]["problem"]


# ---------------------------------------------------------------- pages: text, never markup; never outside --out

def _tokens(markdown: str) -> set[str]:
    """The MyST token types of a page as the book's parser reads it (_config.yml's extensions)."""
    parser = create_md_parser(MdParserConfig(enable_extensions={"colon_fence", "dollarmath", "substitution"}),
                              RendererHTML)

    def walk(tokens):
        for token in tokens:
            yield token
            yield from walk(token.children or [])
    return {token.type for token in walk(parser.parse(markdown))}


@pytest.mark.parametrize("hostile", HOSTILE)
def test_markdown_text_is_read_back_as_the_same_plain_text(hostile):
    escaped = report.markdown_text(hostile)
    parser = create_md_parser(MdParserConfig(enable_extensions={"colon_fence", "dollarmath", "substitution"}),
                              RendererHTML)
    tokens = parser.parse(f"before {escaped} after")
    assert [token.type for token in tokens] == ["paragraph_open", "inline", "paragraph_close"]
    assert {child.type for child in tokens[1].children} == {"text"}
    shown = "".join(" " if char in "\n\0" else char for char in hostile)
    assert "".join(child.content for child in tokens[1].children) == f"before {shown} after"


def test_a_records_strings_reach_its_page_as_text_never_as_markup(tmp_path):
    """Every string a page shows from a record (the data set's label, the device) holds a tag,
    a link, a role, math, a substitution and a fence: the page parses into the token types a
    plain record's page does, and its HTML holds no tag of the record's."""
    results, pages = tmp_path / "results", tmp_path / "pages"
    make_run(results, "plain-seed0", label="CIFAR-10 (JPEG mirror)", device="NVIDIA H100")
    hostile = " ".join(HOSTILE)
    make_run(results, "hostile-seed0", label=hostile, device=hostile)
    book_pages.write_pages(results, pages)
    plain, page = ((pages / f"{name}-seed0.md").read_text() for name in ("plain", "hostile"))
    assert _tokens(page) == _tokens(plain)
    html = create_md_parser(MdParserConfig(enable_extensions={"colon_fence", "dollarmath", "substitution"}),
                            RendererHTML).render(page)
    assert "<script" not in html and "<img src=x" not in html and 'href="javascript' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as text, not dropped


def test_budget_summary_shows_a_records_device_as_text(tmp_path):
    make_run(tmp_path, "wrn_16_4-seed0", arch="wrn_16_4", device="<img src=x onerror=alert(1)> {{ x }}")
    runs, _ = records.load_runs(tmp_path)
    summary = report.budget_summary(runs)
    assert "<img" not in summary and _tokens(summary) == {"paragraph_open", "inline", "text", "paragraph_close"}


def test_a_damaged_name_never_chooses_where_a_page_is_written(tmp_path):
    """The record check keeps such a name out (above); were a record to pass it, the page is still
    refused rather than written outside the pages' folder."""
    results, pages = tmp_path / "results", tmp_path / "book" / "runs"
    run_dir = make_run(results, "a-seed0")
    for name in ("../../X", "/tmp/X", "..", "a\\b"):
        run = records.RunRecord(run_dir, dataclasses.replace(records.read_run(run_dir), name=name))
        with pytest.raises(ValueError, match="outside"):
            book_pages.write_pages(results, pages, [run])
    assert not (tmp_path / "X.md").exists() and not (tmp_path / "X.svg").exists() and not pages.exists()


def test_the_chained_attack_leaves_the_readme_alone(tmp_path, capsys):
    """A bundle whose record is named ../../README, unbundled, then `pages` over it: the README
    of the repository is not overwritten (the issue's chain)."""
    src = tmp_path / "campaign"
    write_run(src / "x-seed0", 1, status="complete", checkpoint=False)
    record = json.loads((src / "x-seed0" / records.RUN_FILE).read_text())
    (src / "x-seed0" / records.RUN_FILE).write_text(json.dumps({**record, "name": "../../README"}))
    bundling.bundle(src, tmp_path / "bundle")
    repository = tmp_path / "repo"
    (repository / "book" / "runs").mkdir(parents=True)
    (repository / "README.md").write_text("the user's README\n")
    code, err = run_cli(capsys, ["unbundle", str(tmp_path / "bundle"), "--to", str(repository / "results-hostile")])
    assert code == 2 and "'name' = '../../README'" in _first_line(err)
    assert not (repository / "results-hostile").exists()
    shutil.copytree(src, repository / "results-hostile")  # copied by hand instead: pages refuses it
    code, err = run_cli(capsys, ["pages", "--results", str(repository / "results-hostile"),
                                 "--out", str(repository / "book" / "runs")])
    assert code == 0 and "no page for" in err and "'../../README'" in err
    assert (repository / "README.md").read_text() == "the user's README\n"
    assert list((repository / "book" / "runs").iterdir()) == []


@pytest.fixture(scope="module")
def two_paged_runs(tmp_path_factory) -> Path:
    """results/ with runs a and b, and pages/ with their pages, written once (copy before changing)."""
    folder = tmp_path_factory.mktemp("paged")
    make_run(folder / "results", "a-seed0")
    make_run(folder / "results", "b-seed0")
    book_pages.write_pages(folder / "results", folder / "pages")
    return folder


@pytest.mark.parametrize("damage, words", [
    pytest.param(bytes(range(1, 128)) * 3, "not a readable metrics table", id="binary-that-decodes"),
    pytest.param(b"\x00\xff\xfe" * 50, "not a readable metrics table", id="binary"),
    pytest.param(b"when,what\n1,2\n", "no 'epoch' column", id="another-table"),
    pytest.param(b"epoch,test_error\n1,high\n", "'test_error' not numbers", id="words-for-numbers"),
])
def test_pages_writes_the_new_pages_before_it_removes_the_old_and_a_damaged_metrics_csv_changes_nothing(
        tmp_path, capsys, two_paged_runs, damage, words):
    shutil.copytree(two_paged_runs, tmp_path, dirs_exist_ok=True)
    results, pages = tmp_path / "results", tmp_path / "pages"
    broken = results / "b-seed0"
    before = {path.name: path.read_bytes() for path in pages.iterdir()}
    assert sorted(before) == ["a-seed0.md", "a-seed0.svg", "b-seed0.md", "b-seed0.svg"]
    (broken / records.METRICS_FILE).write_bytes(damage)
    code, err = run_cli(capsys, ["pages", "--results", str(results), "--out", str(pages)])
    assert code == 2 and str(broken / records.METRICS_FILE) in _first_line(err) and words in err
    assert {path.name: path.read_bytes() for path in pages.iterdir()} == before


def test_two_records_of_one_name_are_refused_not_one_page_over_the_other(tmp_path):
    results = tmp_path / "results"
    make_run(results, "a-seed0")
    shutil.copytree(results / "a-seed0", results / "copy-seed0")  # its record still says a-seed0
    with pytest.raises(ValueError, match="of one name 'a-seed0'"):
        book_pages.write_pages(results, tmp_path / "pages")
    assert not (tmp_path / "pages").exists()


def test_pages_readme_without_markers_refuses_before_writing_a_page(tmp_path, capsys):
    results, pages = tmp_path / "results", tmp_path / "pages"
    make_run(results, "a-seed0")
    (tmp_path / "README.md").write_text("# no markers\n")
    code, err = run_cli(capsys, ["pages", "--results", str(results), "--out", str(pages),
                                 "--readme", str(tmp_path / "README.md")])
    assert code == 2 and "no status section" in _first_line(err) and not pages.exists()


def test_a_benchmarks_strings_reach_its_page_as_text_and_cannot_close_its_printed_tables_fence(tmp_path):
    from test_report import bench_record
    row = {"arch": "wrn_16_4", "path": "reproresnet", "seconds_per_epoch": 7.31, "images_per_second": 6840.0,
           "data_images_per_second": 1e5, "warmup_seconds": 1.0, "peak_memory_mb": None, "tflops": 1.0}
    pages = {}
    for name, device in (("plain", "NVIDIA H100"), ("hostile", "```\n<script>x</script>\n````")):
        results = tmp_path / name / "results"
        (results / "bench-cpu").mkdir(parents=True)
        bench = {**bench_record([{**row, "arch": device if name == "hostile" else "wrn_16_4"}]),
                 "warmup_steps": 5, "ratios": []}
        bench["device"] = {**bench["device"], "name": device}
        (results / "bench-cpu" / "bench.json").write_text(json.dumps(bench))
        book_pages.write_pages(results, tmp_path / name / "pages")
        pages[name] = (tmp_path / name / "pages" / "bench-cpu.md").read_text()
    assert "<script>x</script>" in pages["hostile"]  # printed, inside the fence ...
    parser = create_md_parser(MdParserConfig(enable_extensions={"colon_fence", "dollarmath", "substitution"}),
                              RendererHTML)
    assert [t.type for t in parser.parse(pages["hostile"])] == [t.type for t in parser.parse(pages["plain"])]
    assert "<script>" not in parser.render(pages["hostile"])  # ... which it never closes


# ---------------------------------------------------------------- no command writes outside the folder it was given

def test_the_plan_refuses_a_tag_that_is_not_a_name():
    with pytest.raises(ValueError, match="tag='../x' is not valid"):
        campaign.Plan(archs=("preact_resnet20",), seeds=(0,), tag="../x").configs("/tmp/nowhere", "cpu", "fp32")


@pytest.mark.parametrize("tag", ["../../../outside", "/tmp/outside", "a/b", "..", ".hidden", "a b"])
def test_a_campaign_tag_that_is_not_a_name_is_refused_before_anything_is_created(tmp_path, capsys, monkeypatch,
                                                                                  tag):
    def exit_(code):  # a campaign that ran ends with os._exit, which would end the tests too
        raise SystemExit(code)
    monkeypatch.setattr(os, "_exit", exit_)
    out = tmp_path / "a" / "b" / "out"
    code, err = run_cli(capsys, ["campaign", "--out", str(out), "--budget", "1", "--archs", "preact_resnet20",
                                 "--seeds", "0", "--dataset", "synthetic", "--device", "cpu", "--tag", tag])
    assert code == 2 and f"tag={tag!r} is not valid" in _first_line(err) and "letters, digits" in err
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_tag_that_is_not_a_name_is_refused_before_anything_is_created(tmp_path):
    from reproresnet.launch import sweep
    with pytest.raises(ValueError, match="tag='../../x' is not valid"):
        sweep.run_sweep(["preact_resnet20"], [0], tmp_path / "results", {"dataset": "synthetic"}, tag="../../x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../x", "/tmp/x", ".."])
def test_bundle_and_unbundle_refuse_a_name_that_is_a_path(tmp_path, capsys, name):
    src = tmp_path / "campaign"
    write_run(src / "a-seed0", 1)
    for command in (["bundle", str(src), "--to", str(tmp_path / "out")],
                    ["unbundle", str(tmp_path / "out"), "--to", str(tmp_path / "home")]):
        code, err = run_cli(capsys, [*command, "--name", name])
        assert code == 2 and f"--name {name!r} is not valid" in _first_line(err)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["campaign"]


def test_bundle_refuses_a_file_whose_name_unbundle_would_refuse_before_writing_a_part(tmp_path):
    src = tmp_path / "campaign"
    write_run(src / "a-seed0", 1)
    (src / "a-seed0" / "my notes.txt").write_text("x")
    with pytest.raises(bundling.BundleError, match="my notes.txt cannot be bundled"):
        bundling.bundle(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_manifest_listing_a_path_with_a_hidden_or_odd_part_is_refused(tmp_path, capsys):
    src = tmp_path / "campaign"
    write_run(src / "a-seed0", 1)
    bundling.bundle(src, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "bundle.json").read_text())
    manifest["files"][0]["path"] = ".ssh/authorized_keys"
    (tmp_path / "out" / "bundle.json").write_text(json.dumps(manifest))
    code, err = run_cli(capsys, ["unbundle", str(tmp_path / "out"), "--to", str(tmp_path / "home")])
    assert code == 2 and "'.ssh/authorized_keys'" in _first_line(err) and not (tmp_path / "home").exists()


# ---------------------------------------------------------------- unbundle: never another experiment's place

def _run_of(run_dir: Path, epochs: int, **config) -> None:
    """A run of ours whose record and checkpoint hold `config`."""
    write_run(run_dir, epochs)
    record = json.loads((run_dir / records.RUN_FILE).read_text())
    (run_dir / records.RUN_FILE).write_text(json.dumps({**record, "config": config}))
    state = rundir.read_checkpoint(run_dir / records.CHECKPOINT_FILE)
    rundir.write_checkpoint(run_dir / records.CHECKPOINT_FILE, {**state, "config": config,
                                                                 "record": {**state["record"], "config": config}})


def test_unbundle_never_replaces_a_run_of_another_experiment_and_says_which_and_why(tmp_path, capsys):
    """The issue's case: the same folder name and progress, but seed 1 and lr 0.05 in the bundle."""
    src, home = tmp_path / "campaign", tmp_path / "home"
    _run_of(src / "r-seed0", 1, arch="preact_resnet20", seed=1, lr=0.05)
    _run_of(src / "s-seed0", 1, arch="preact_resnet20", seed=0)
    bundling.bundle(src, tmp_path / "bundle")
    _run_of(home / "r-seed0", 1, arch="preact_resnet20", seed=0)
    before = files_of(home)
    code, err = run_cli(capsys, ["unbundle", str(tmp_path / "bundle"), "--to", str(home)])
    assert code == 1 and "r-seed0" in _first_line(err)
    assert {rel: digest for rel, digest in files_of(home).items() if rel.startswith("r-seed0")} == before
    assert rundir.how_far(home / "s-seed0") == (1, False)  # the other run is restored


def test_unbundle_says_which_settings_differ(tmp_path):
    src, home = tmp_path / "campaign", tmp_path / "home"
    _run_of(src / "r-seed0", 1, arch="preact_resnet20", seed=1, lr=0.05)
    bundling.bundle(src, tmp_path / "bundle")
    _run_of(home / "r-seed0", 1, arch="preact_resnet20", seed=0)
    done = bundling.unbundle(tmp_path / "bundle", home)
    why = done["skipped"]["r-seed0"]
    assert done["refused"] == ["r-seed0"] and done["restored"] == []
    assert "another experiment" in why and "seed: 0 here, 1 in the bundle" in why and "lr: 0.1 here, 0.05" in why


def test_a_bundle_whose_record_and_checkpoint_are_other_experiments_is_refused_whole(tmp_path, capsys):
    src = tmp_path / "campaign"
    _run_of(src / "r-seed0", 1, arch="preact_resnet20", seed=1)
    record = json.loads((src / "r-seed0" / records.RUN_FILE).read_text())
    (src / "r-seed0" / records.RUN_FILE).write_text(json.dumps({**record, "config": {"arch": "preact_resnet20",
                                                                                      "seed": 2}}))
    bundling.bundle(src, tmp_path / "bundle")
    code, err = run_cli(capsys, ["unbundle", str(tmp_path / "bundle"), "--to", str(tmp_path / "home")])
    assert code == 2 and "other experiments" in _first_line(err) and not (tmp_path / "home").exists()


def test_unbundle_never_writes_into_a_folder_that_holds_no_run_of_ours(tmp_path, capsys):
    src, home = tmp_path / "campaign", tmp_path / "home"
    write_run(src / "a-seed0", 1)
    bundling.bundle(src, tmp_path / "bundle")
    (home / "a-seed0").mkdir(parents=True)
    (home / "a-seed0" / records.RUN_FILE).write_text('{"mine": true}')
    (home / "a-seed0" / records.METRICS_FILE).write_text("my,own,table\n")
    code, err = run_cli(capsys, ["unbundle", str(tmp_path / "bundle"), "--to", str(home)])
    assert code == 1 and "a-seed0" in _first_line(err)
    assert sorted(path.name for path in (home / "a-seed0").iterdir()) == [records.METRICS_FILE, records.RUN_FILE]
    assert (home / "a-seed0" / records.RUN_FILE).read_text() == '{"mine": true}'


# ---------------------------------------------------------------- ours or nothing

@pytest.fixture
def users_folder(tmp_path) -> Path:
    """A folder of the user's own, whose files have our files' names."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / records.METRICS_FILE).write_text("epoch,my,data\n1,2,3\n")
    (folder / records.RUN_FILE).write_text('{"mine": true}\n')
    return folder


@pytest.mark.parametrize("resume", [False, True])
def test_train_never_writes_into_a_folder_of_the_users_and_never_advises_resuming_it(capsys, users_folder, resume):
    before = {path.name: path.read_bytes() for path in users_folder.iterdir()}
    code, err = run_cli(capsys, argv(users_folder, resume=resume))
    line = _first_line(err)
    assert code == 2 and str(users_folder) in line and "did not write" in line and "--resume" not in line
    assert {path.name: path.read_bytes() for path in users_folder.iterdir()} == before  # not even a .lock


def test_a_checkpoint_of_someone_elses_is_not_a_run_to_resume(capsys, tmp_path):
    import torch
    folder = tmp_path / "theirs"
    folder.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, folder / records.CHECKPOINT_FILE)
    code, err = run_cli(capsys, argv(folder, resume=True))
    assert code == 2 and "did not write" in _first_line(err) and "delete" not in err
    assert sorted(path.name for path in folder.iterdir()) == [records.CHECKPOINT_FILE]


def test_ours_is_decided_by_our_formats_markers(tmp_path):
    empty, ours, by_checkpoint, theirs = (tmp_path / name for name in ("empty", "ours", "by-checkpoint", "theirs"))
    empty.mkdir()
    (empty / records.LOCK_FILE).write_text("pid 1 on host")
    write_run(ours, 1)
    write_run(by_checkpoint, 1)
    (by_checkpoint / records.RUN_FILE).write_text("damaged")  # the checkpoint says whose it is
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    for folder in (empty, ours, by_checkpoint, tmp_path / "absent"):
        rundir.check_ours(folder)
    with pytest.raises(rundir.RunDirError, match="notes.txt.*choose a new or empty --out"):
        rundir.check_ours(theirs)


@pytest.mark.parametrize("out", [".", "runs/my run", "runs/.hidden"])
def test_a_run_directory_whose_name_cannot_name_a_run_is_refused(tmp_path, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, argv(out))
    assert code == 2 and "names the run" in _first_line(err) and list(tmp_path.iterdir()) == []
