"""The numbers a reader sees are the numbers the run computed: record, metrics, glued values.

`notebooks/train.ipynb` is executed with papermill on a tiny synthetic run (seconds); every
number it glues, and every glued key the book's pages cite from a training notebook, must
exist and equal what the run record, its metrics.csv and its checkpoint hold.
"""

import ast
import csv
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from reproresnet import records
from reproresnet.models import build_model

ROOT = Path(__file__).resolve().parent.parent
TRAIN_NOTEBOOK = ROOT / "notebooks" / "train.ipynb"
# What the training notebook promises its readers (the run pages and anything citing them).
GLUED_NUMBERS = {"test_error", "seconds_per_epoch", "params"}
GLUED_FIGURES = {"curves"}
GLUE_ROLE = re.compile(r"\{glue(?::\w+)?\}`([^`]+)`")
GLUE_DIRECTIVE = re.compile(r"```\{glue(?::\w+)?\}\s+(\S+)\s*\n((?::\w+:.*\n)*)")


def cited_training_keys() -> set[str]:
    """Glued keys that the book's pages and the results notebook cite from a training notebook."""
    texts = [path.read_text() for path in (ROOT / "book").glob("*.md")]
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        texts += ["".join(cell["source"]) for cell in json.loads(path.read_text())["cells"]
                  if cell["cell_type"] == "markdown"]
    keys = set()
    for text in texts:
        for reference in GLUE_ROLE.findall(text):
            path, _, key = reference.rpartition("::")
            if path.endswith("train.ipynb"):
                keys.add(key.split(":")[0])
        for key, options in GLUE_DIRECTIVE.findall(text):
            if re.search(r":doc:.*train(\.ipynb)?\s*$", options, re.M):
                keys.add(key)
    return keys


def glued_outputs(notebook: dict) -> dict:
    """{key: output} for every value the executed notebook glued."""
    return {output["metadata"]["scrapbook"]["name"]: output
            for cell in notebook["cells"] if cell["cell_type"] == "code"
            for output in cell.get("outputs", []) if "scrapbook" in output.get("metadata", {})}


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """train.ipynb executed by papermill on 2 epochs of 32 synthetic images with 8 held out."""
    import papermill
    tmp = tmp_path_factory.mktemp("train-notebook")
    run_dir = tmp / "run"
    env = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env]))  # the kernel runs this checkout
    try:
        papermill.execute_notebook(
            str(TRAIN_NOTEBOOK), str(tmp / "train.ipynb"), cwd=str(TRAIN_NOTEBOOK.parent), progress_bar=False,
            parameters={"arch": "preact_resnet20", "epochs": 2, "batch_size": 16, "dataset": "synthetic",
                        "limit_train": 40, "limit_test": 16, "val_size": 8, "device": "cpu",
                        "run_dir": str(run_dir)})
    finally:
        if env is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = env
    return json.loads((tmp / "train.ipynb").read_text()), run_dir


def test_training_notebook_glues_every_number_its_readers_cite(executed):
    """Protects the glued names: a renamed or dropped glue in train.ipynb fails here, not in the book."""
    notebook, _ = executed
    required = GLUED_NUMBERS | GLUED_FIGURES | cited_training_keys()
    missing = required - set(glued_outputs(notebook))
    assert not missing, f"train.ipynb no longer glues {sorted(missing)}"


def test_glued_numbers_equal_the_run_record(executed):
    """Protects the glued values: each equals the run record's number, not a neighbouring one."""
    notebook, run_dir = executed
    record = records.read_run(run_dir)
    glued = {key: ast.literal_eval(output["data"][output["metadata"]["scrapbook"]["mime_prefix"] + "text/plain"])
             for key, output in glued_outputs(notebook).items() if key in GLUED_NUMBERS}
    assert glued["test_error"] == pytest.approx(record.final.test_error, rel=1e-12)
    assert glued["seconds_per_epoch"] == pytest.approx(record.final.seconds_per_epoch, rel=1e-12)
    assert glued["params"] == record.params


def test_record_metrics_and_checkpoint_agree_on_the_reported_epoch(executed):
    """Protects the record chain: run.json's final error is the best-validation epoch's test error in
    metrics.csv and in the checkpoint, which is the source of truth."""
    _, run_dir = executed
    record = records.read_run(run_dir)
    assert record.status == "complete" and record.epochs_done == 2
    checkpoint = torch.load(run_dir / records.CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    rows = checkpoint["metrics"]
    best = min(rows, key=lambda row: row["val_error"])  # first of equals, as the seed kept its snapshot
    assert record.final.epoch == best["epoch"] and record.final.selected_by == "best_validation"
    assert record.final.test_error == best["test_error"]
    with open(run_dir / records.METRICS_FILE) as file:
        csv_rows = list(csv.DictReader(file))
    assert [int(row["epoch"]) for row in csv_rows] == [1, 2]
    for csv_row, row in zip(csv_rows, rows):
        for key in ("lr", "train_loss", "train_error", "val_error", "test_loss", "test_error"):
            assert math.isclose(float(csv_row[key]), row[key], rel_tol=1e-5, abs_tol=1e-9), key
    assert record.data.n_train == 32 and record.data.n_val == 8 and record.data.n_test == 16
    assert record.params == sum(p.numel() for p in build_model("preact_resnet20").parameters())
