"""The generated pages: one per record, with its files to download, and the README's status table."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from reproresnet import records
from reproresnet.book import pages as book_pages
from test_report import bench_record, make_run, with_speed

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_status_table_is_what_the_records_say():
    """Fails when results/ changed and nobody ran `make readme` (make book does)."""
    text = (ROOT / "README.md").read_text()
    section = text.partition(book_pages.README_START)[2].partition(book_pages.README_END)[0].strip()
    assert section == book_pages.readme_status(ROOT / "results"), "README.md's status is stale: run `make readme`"


def test_update_readme_rewrites_only_its_section_and_links_each_number(tmp_path):
    results = tmp_path / "results"
    make_run(results, "wrn_16_4-seed0", arch="wrn_16_4", test_error=6.0)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{book_pages.README_START}\nold\n{book_pages.README_END}\n\nafter\n")
    assert book_pages.update_readme(readme, results) is True
    text = readme.read_text()
    assert text.startswith(f"# title\n\n{book_pages.README_START}\n1 of 15") and text.endswith("\n\nafter\n")
    assert re.search(r'\| \[WRN-16-4\]\(notebooks/architectures\.ipynb "wrn_16_4"\) +\|', text)
    assert "[6.00 (1 of 3 seeds, 200 epochs)](results/wrn_16_4-seed0/)" in text
    assert book_pages.update_readme(readme, results) is False  # already current
    (tmp_path / "bare.md").write_text("# no section\n")
    with pytest.raises(ValueError, match="no status section"):
        book_pages.update_readme(tmp_path / "bare.md", results)


def test_every_record_gets_a_page_with_its_files_to_download(tmp_path):
    results, pages = tmp_path / "results", tmp_path / "book" / "runs"
    with_speed(make_run(results, "preact_resnet110-jpeg-seed0", status="stopped", label="CIFAR-10 (JPEG mirror)",
                        dataset="folder:/m"), {"seconds_per_epoch": 37.0, "images_per_second": 1350, "pack": 3,
                                               "threads": 4})
    (results / "preact_resnet110-jpeg-seed0" / "train.ipynb").write_text("{}")
    (results / "preact_resnet110-jpeg-seed0" / records.CHECKPOINT_FILE).write_bytes(b"weights")
    make_run(results, "wrn_16_4-seed0", arch="wrn_16_4", test_error=5.4, epochs=3)
    (results / "bench-cpu").mkdir()
    (results / "bench-cpu" / "bench.json").write_text(json.dumps({**bench_record(
        [{"arch": "wrn_16_4", "path": "reproresnet", "seconds_per_epoch": 7.31, "images_per_second": 6840.0,
          "data_images_per_second": 1e5, "warmup_seconds": 1.0, "peak_memory_mb": None, "tflops": 1.0}]),
        "warmup_steps": 5, "ratios": []}))
    pages.mkdir(parents=True)
    (pages / "gone-seed0.md").write_text("# a record since removed")
    written = book_pages.write_pages(results, pages)
    assert sorted(path.name for path in written) == ["bench-cpu.md", "preact_resnet110-jpeg-seed0.md",
                                                     "wrn_16_4-seed0.md"]
    assert sorted(path.name for path in pages.iterdir()) == sorted(
        [path.name for path in written] + ["preact_resnet110-jpeg-seed0.svg", "wrn_16_4-seed0.svg"])
    mirror = (pages / "preact_resnet110-jpeg-seed0.md").read_text()
    assert mirror.startswith("# preact_resnet110-jpeg-seed0\n\npreact_resnet110, stopped at 2/200 (interrupted), "
                             "resumable. It trained on CIFAR-10 (JPEG mirror), not on CIFAR-10")
    assert "synthetic" not in mirror
    downloads = re.findall(r"\{download\}`(\S+) <([^>]+)>`", mirror)
    assert downloads == [(name, f"../../results/preact_resnet110-jpeg-seed0/{name}")
                         for name in ("run.json", "metrics.csv", "train.ipynb")]
    assert all((pages / target).resolve().is_file() for _, target in downloads)
    assert 'data-run="preact_resnet110-jpeg-seed0"' in mirror and " >4</td>" in mirror  # its CPU threads
    assert "![" in mirror and "(preact_resnet110-jpeg-seed0.svg)" in mirror
    assert "train.ipynb" not in (pages / "wrn_16_4-seed0.md").read_text()  # only the files that exist
    bench = (pages / "bench-cpu.md").read_text()
    assert "{download}`bench.json <../../results/bench-cpu/bench.json>`" in bench and "7.3" in bench
    assert "Its checkpoint is kept: `train --resume`" in mirror
    svg = (pages / "wrn_16_4-seed0.svg").read_bytes()
    book_pages.write_pages(results, pages)
    assert (pages / "wrn_16_4-seed0.svg").read_bytes() == svg  # the same records, the same files


def test_the_book_links_no_repository_address_that_git_does_not_record():
    """The repository button, {{ repository }} and CITATION.cff's repository-code name the public
    address git records as the remote `origin`, and no other: an address nobody published is a dead link."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    text = config["parse"]["myst_substitutions"]["repository"]
    assert "{{ repository }}" in (ROOT / "book" / "reproduce.md").read_text()
    remote = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"], capture_output=True,
                            text=True).stdout.strip()
    public = remote if remote.startswith("https://") else None
    url = (config.get("repository") or {}).get("url")
    if config["html"].get("use_repository_button"):
        assert url is not None and url == public
    for address in re.findall(r"https?://[^\s)\]]+", text):
        assert address == public, f"{address} is not the repository's recorded address ({remote or 'no remote'})"
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())  # cited software links the same address
    assert citation.get("repository-code") in (None, public)


def test_a_run_page_agrees_with_its_record(tmp_path):
    """An unfinished run whose checkpoint was not kept: its page gives the seconds per epoch its
    speed table gives, explains that the record's "resume to continue" no longer holds, and shows
    the record's git commit and torch version."""
    results, pages = tmp_path / "results", tmp_path / "book" / "runs"
    run_dir = with_speed(make_run(results, "preact_resnet110-jpeg-seed0", status="stopped",
                                  label="CIFAR-10 (JPEG mirror)", dataset="folder:/m"),
                         {"seconds_per_epoch": 36.96, "images_per_second": 1350, "pack": 3})
    record = json.loads((run_dir / records.RUN_FILE).read_text())
    record.update(message="stopped cleanly after epoch 2 of 200 (deadline); resume to continue",
                  git={"commit": "6d7e7b530ab21485a4b9cd27cdf4aab52915017e", "dirty": False},
                  versions={"torch": "2.11.0+cu130"})
    (run_dir / records.RUN_FILE).write_text(json.dumps(record))
    book_pages.write_pages(results, pages)
    page = (pages / "preact_resnet110-jpeg-seed0.md").read_text()
    assert "stopped at 2/200 (deadline), checkpoint not kept" in page
    assert "resume to continue" in page and "cannot be resumed" in page and "fresh run from epoch 1" in page
    cell = r'<td class="[^"]*\b{}"\s*>{}</td>'
    summary = cell.format("text", "seconds per epoch") + r"\s*" + cell.format("text", r"37\.0 \(so far[^<]*")
    assert re.search(summary, page)
    assert re.search(cell.format("num", r"37\.0"), page)  # the speed table's
    assert "6d7e7b530ab2" in page and "2.11.0+cu130" in page
    assert "status words</a>" in page
