"""The papermill sweep: which runs it executes, with which parameters, and the notebook itself."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import nbformat
import pytest

from reproresnet import records
from reproresnet.launch import sweep
from reproresnet.config import cpu_threads

ROOT = Path(__file__).resolve().parent.parent
TRAIN_NOTEBOOK = ROOT / "notebooks" / "train.ipynb"
IN_PROCESS = sweep.Launch(launcher="debug")  # submitit's debug executor: the fake papermill applies


def write_record(run_dir, status="complete", **config):
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"arch": "preact_resnet20", "seed": 0, "epochs": 2, "dataset": "synthetic", "out": str(run_dir),
              **config}
    record = {"format": records.RUN_FORMAT, "status": status, "name": run_dir.name, "arch": config["arch"],
              "config": config, "data": {"label": "synthetic"}, "epochs_planned": 2,
              "epochs_done": 2 if status == "complete" else 1}
    (run_dir / records.RUN_FILE).write_text(json.dumps(record))


@pytest.fixture
def fake_papermill(monkeypatch):
    """Records every papermill call; each "execution" writes a complete run record."""
    import papermill
    calls = []

    def execute_notebook(input_path, output_path, parameters, cwd, **kwargs):
        calls.append({"notebook": input_path, "output": output_path, "parameters": parameters, "cwd": cwd})
        write_record(Path(parameters["run_dir"]), arch=parameters["arch"], seed=parameters["seed"])
        Path(output_path).write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    return calls


def test_sweep_skips_a_complete_run_and_passes_the_right_parameters(tmp_path, fake_papermill):
    write_record(tmp_path / "preact_resnet20-seed0")
    outcomes = sweep.run_sweep(["preact_resnet20"], [0, 1], tmp_path, {"epochs": 2, "dataset": "synthetic"},
                               IN_PROCESS, notebook=str(TRAIN_NOTEBOOK))
    assert [(o["run"], o["status"]) for o in outcomes] == [("preact_resnet20-seed0", "skipped"),
                                                          ("preact_resnet20-seed1", "complete")]
    [call] = fake_papermill
    run_dir = tmp_path / "preact_resnet20-seed1"
    assert call["parameters"] == {"epochs": 2, "dataset": "synthetic", "arch": "preact_resnet20", "seed": 1,
                                  "run_dir": str(run_dir), "threads": cpu_threads(jobs=1)[0]}
    assert call["output"] == str(run_dir / "train.ipynb")
    assert call["cwd"] is None  # the caller's directory: relative paths keep their meaning
    # the page of each run is titled with its name
    assert call["notebook"].cells[0].source.startswith("# Training run `preact_resnet20-seed1`")


def test_sweep_executes_an_interrupted_run_again_so_it_resumes(tmp_path, fake_papermill):
    write_record(tmp_path / "wrn_16_4-seed0", status="running", arch="wrn_16_4")
    outcomes = sweep.run_sweep(["wrn_16_4"], [0], tmp_path, {"epochs": 2}, IN_PROCESS, notebook=str(TRAIN_NOTEBOOK))
    assert outcomes[0]["status"] == "complete"
    assert len(fake_papermill) == 1


def test_sweep_reports_a_complete_run_recorded_with_other_settings(tmp_path, fake_papermill):
    write_record(tmp_path / "preact_resnet20-seed0", epochs=2)
    [outcome] = sweep.run_sweep(["preact_resnet20"], [0], tmp_path, {"epochs": 200}, IN_PROCESS,
                                notebook=str(TRAIN_NOTEBOOK))
    assert outcome["status"] == "conflict" and "epochs" in outcome["message"]
    assert fake_papermill == []


def test_a_complete_run_asked_for_by_its_effective_values_is_the_same_experiment(tmp_path, fake_papermill):
    """The recipe's 200 epochs asked for as None (the recipe's length), a device and an engine
    that change where, not what: skipped, as a resumption would accept them."""
    write_record(tmp_path / "preact_resnet20-seed0", epochs=200, device="cpu")
    [outcome] = sweep.run_sweep(["preact_resnet20"], [0], tmp_path, {"epochs": None, "dataset": "synthetic",
                                                                     "device": "auto", "engine": "eager"},
                                IN_PROCESS, notebook=str(TRAIN_NOTEBOOK))
    assert outcome["status"] == "skipped" and fake_papermill == []


def test_sweep_names_runs_by_tag_relative_to_the_callers_directory(tmp_path, fake_papermill, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep.run_sweep(["wrn_16_4"], [3], "results", {"data_dir": "data"}, IN_PROCESS, notebook=str(TRAIN_NOTEBOOK),
                    tag="he2016")
    [call] = fake_papermill
    assert call["parameters"]["run_dir"] == "results/wrn_16_4-he2016-seed3"
    assert call["parameters"]["data_dir"] == "data"
    assert (tmp_path / "results" / "wrn_16_4-he2016-seed3" / "run.json").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"parameters": {"arch": "wrn_16_4"}}, "set per run"),
    ({"parameters": {}, "launch": sweep.Launch(jobs=0)}, "jobs=0"),
    ({"parameters": {}, "launch": sweep.Launch(launcher="pbs")}, "launcher='pbs'.*local"),
    ({"parameters": {}, "launch": sweep.Launch(slurm_partition="gpu")}, "slurm_partition='gpu' applies to.*slurm"),
    ({"parameters": {}, "launch": sweep.Launch(launcher="slurm", pack=2)}, "pack=2 applies to.*local"),
])
def test_sweep_rejects_bad_arguments(tmp_path, fake_papermill, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sweep.run_sweep(["wrn_16_4"], [0], tmp_path, **kwargs)
    assert fake_papermill == []


@pytest.mark.parametrize("archs, parameters, message", [
    (["preact_resnet20", "resnet19"], {}, "arch='resnet19' is not valid"),
    (["preact_resnet20"], {"lr": "nan"}, "lr='nan' is not valid: expected a finite number"),
    (["preact_resnet20"], {"shortcut": "sideways"}, "shortcut"),
    (["preact_resnet20"], {"epochs": 0}, "epochs=0"),
])
def test_sweep_checks_every_runs_settings_before_it_starts_a_job(tmp_path, fake_papermill, archs, parameters,
                                                                 message):
    with pytest.raises(ValueError, match=message):
        sweep.run_sweep(archs, [0, 1], tmp_path / "results", parameters, IN_PROCESS, notebook=str(TRAIN_NOTEBOOK))
    assert fake_papermill == [] and not (tmp_path / "results").exists()


def test_main_refuses_a_bad_setting_before_it_starts_a_job(tmp_path, fake_papermill, capsys):
    for value in ("nan", "1e999"):
        argv = ["--archs", "preact_resnet20", "--results", str(tmp_path), "--launcher", "debug", "--set", f"lr={value}"]
        assert sweep.main(argv) == 2
        err = capsys.readouterr().err
        assert "error: lr=" in err and "finite number" in err and len(err.strip().splitlines()) == 1, err
    assert fake_papermill == [] and not any(tmp_path.iterdir())


def test_the_sweep_finds_its_notebook_from_any_directory(tmp_path, fake_papermill, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [outcome] = sweep.run_sweep(["preact_resnet20"], [0], "results", {"epochs": 2}, IN_PROCESS)
    assert outcome["status"] == "complete" and Path(sweep.DEFAULT_NOTEBOOK) == TRAIN_NOTEBOOK
    with pytest.raises(ValueError, match="notebook 'missing.ipynb' not found"):
        sweep.run_sweep(["preact_resnet20"], [1], "results", {}, IN_PROCESS, notebook="missing.ipynb")


def test_main_passes_the_full_experiment_not_the_notebook_smoke_defaults(tmp_path, monkeypatch):
    captured = {}

    def run_sweep(archs, seeds, results_dir, parameters, launch, notebook, tag, wait):
        captured.update(archs=archs, seeds=seeds, results_dir=results_dir, parameters=parameters,
                        jobs=launch.jobs, launch=launch, wait=wait)
        return [{"run": "x", "status": "skipped", "message": None}]

    monkeypatch.setattr(sweep, "run_sweep", run_sweep)
    captured["tag"] = None
    assert sweep.main(["--archs", "preact_resnet110", "wrn_16_4", "--seeds", "0", "1", "2",
                       "--results", str(tmp_path), "--jobs", "2"]) == 0
    assert captured["archs"] == ["preact_resnet110", "wrn_16_4"] and captured["seeds"] == [0, 1, 2]
    assert captured["jobs"] == 2 and captured["results_dir"] == str(tmp_path)
    assert captured["parameters"] == {"recipe": "seed", "epochs": None, "batch_size": None, "dataset": "cifar10",
                                      "data_dir": None, "device": "auto", "limit_train": None,
                                      "limit_test": None, "val_size": None}
    assert captured["launch"] == sweep.Launch(launcher="local", jobs=2) and captured["wait"] is True
    sweep.main(["--archs", "wrn_16_4", "--epochs", "3", "--limit-train", "256", "--dataset", "synthetic"])
    assert captured["parameters"]["epochs"] == 3 and captured["parameters"]["limit_train"] == 256
    # any setting, for an ablation: --set KEY=VALUE, with --tag naming its run directories
    assert sweep.main(["--archs", "preact_resnet110", "--set", "shortcut=input_projection", "--set", "bn_batch=32",
                       "--set", "milestones=[1, 2]", "--set", "lr=None", "--tag", "shortcut-raw"]) == 0
    assert captured["parameters"]["shortcut"] == "input_projection" and captured["parameters"]["bn_batch"] == 32
    assert captured["parameters"]["milestones"] == [1, 2] and captured["parameters"]["lr"] is None
    assert sweep.main(["--archs", "preact_resnet110", "--set", "shortcutt=zero_pad"]) == 2
    sweep.main(["--archs", "wrn_16_4", "--launcher", "slurm", "--slurm-partition", "gpu", "--gpus-per-job", "1",
                "--timeout-min", "600", "--array-parallelism", "4", "--slurm-arg", "account=abc",
                "--slurm-arg=--constraint=a100", "--no-wait"])
    assert captured["launch"] == sweep.Launch(launcher="slurm", timeout_min=600, slurm_partition="gpu",
                                              gpus_per_job=1, array_parallelism=4,
                                              slurm_args={"account": "abc", "constraint": "a100"})
    assert captured["wait"] is False


@pytest.mark.parametrize("argv, message", [
    (["--launcher", "pbs"], "invalid choice: 'pbs'"),
    (["--pack", "0"], "'0' is not an integer >= 1"),
    (["--launcher", "slurm", "--slurm-arg", "account"], "'account' is not KEY=VALUE"),
])
def test_main_rejects_bad_launcher_options_naming_them(argv, message, capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--archs", "wrn_16_4", *argv])
    assert message in capsys.readouterr().err


def test_main_rejects_an_option_of_the_other_launcher(tmp_path, capsys):
    assert sweep.main(["--archs", "wrn_16_4", "--results", str(tmp_path), "--slurm-partition", "gpu"]) == 2
    assert "slurm_partition='gpu' applies to launcher 'slurm', not 'local'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing submitted


@pytest.mark.parametrize("gpus, pack, jobs, slots", [
    ([], None, None, [None]),
    ([], None, 3, [None, None, None]),
    ([0, 1], None, None, [0, 1]),
    ([0, 1], 2, None, [0, 1, 0, 1]),
    ([0, 1], 3, 3, [0, 1, 0]),      # a cap still spreads over the GPUs
    ([5], 2, None, [5, 5]),
])
def test_local_jobs_are_spread_over_the_gpus_pack_per_gpu(gpus, pack, jobs, slots):
    assert sweep.local_slots(gpus, pack, jobs) == slots


@pytest.mark.parametrize("listed, gpus", [("2,3", [2, 3]), ("", []), ("1,-1", [1])])
def test_visible_gpus_are_those_cuda_visible_devices_lists(monkeypatch, listed, gpus):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert sweep.visible_gpus() == gpus


def test_visible_gpus_refuses_uuids_naming_them(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2a")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES='GPU-8f2a'.*indices"):
        sweep.visible_gpus()


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """srun and sbatch on PATH; sbatch keeps each script it is given and answers with a job id."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "sbatch-scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {scripts}/$(ls {scripts} | wc -l).sh\n"
                                    "echo 'Submitted batch job 4242'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return scripts


def test_slurm_sweep_submits_one_array_job_per_sweep_with_the_requested_resources(tmp_path, fake_slurm):
    import submitit
    results = tmp_path / "results"
    write_record(results / "wrn_16_4-seed0", arch="wrn_16_4")  # complete: not submitted
    launch = sweep.Launch(launcher="slurm", slurm_partition="gpu", gpus_per_job=1, timeout_min=600,
                          array_parallelism=1, slurm_args={"account": "abc", "cpus-per-task": "8"})
    outcomes = sweep.run_sweep(["wrn_16_4", "preact_resnet20", "preact_resnet32"], [0], results, {"epochs": 2, "dataset": "synthetic"}, launch,
                               notebook="notebooks/train.ipynb", wait=False)
    folder = results / sweep.LOG_FOLDER
    assert [(o["run"], o["status"]) for o in outcomes] == [("wrn_16_4-seed0", "skipped"),
                                                          ("preact_resnet20-seed0", "submitted"),
                                                          ("preact_resnet32-seed0", "submitted")]
    assert outcomes[1]["message"] == f"job 4242_0 (log: {folder}/4242_0/4242_0_0_log.out)"
    [script] = [path.read_text() for path in fake_slurm.iterdir()]  # one sbatch call: an array of 2
    flags = {line for line in script.splitlines() if line.startswith("#SBATCH")}
    assert {"#SBATCH --array=0-1%1", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=600",
            "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --account=abc",
            "#SBATCH --cpus-per-task=8", "#SBATCH --signal=USR2@90", "#SBATCH --job-name=reproresnet",
            f"#SBATCH --output={folder}/%A_%a/%A_%a_0_log.out"} <= flags
    assert sum(flag.startswith("#SBATCH --cpus-per-task") for flag in flags) == 1
    # each array task runs submitit's runner on its own pickled call: the run's notebook and parameters
    command = script.strip().splitlines()[-1]
    assert command.startswith("srun --unbuffered --output") and command.endswith(
        f"-u -m submitit.core._submit {folder}/%j")
    for index, arch in enumerate(["preact_resnet20", "preact_resnet32"]):
        name = f"{arch}-seed0"
        delayed = submitit.helpers.DelayedSubmission.load(folder / f"4242_{index}" / f"4242_{index}_submitted.pkl")
        run = delayed.function
        assert isinstance(run, sweep.NotebookTask) and delayed.args == () and delayed.kwargs == {}
        assert run.notebook == "notebooks/train.ipynb" and run.run_dir == str(results / name)
        assert run.parameters == {"epochs": 2, "dataset": "synthetic", "arch": arch, "seed": 0,
                                  "run_dir": str(results / name)}
        # on a time limit or preemption it is requeued as the same call, up to MAX_TIMEOUTS time limits
        assert delayed._timeout_min == 600 and delayed._timeout_countdown == sweep.MAX_TIMEOUTS
        requeued = run.checkpoint()
        assert isinstance(requeued, submitit.helpers.DelayedSubmission) and requeued.function is run


def test_slurm_launcher_without_slurm_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(ValueError, match="launcher 'slurm' needs Slurm's commands on PATH"):
        sweep.run_sweep(["wrn_16_4"], [0], tmp_path, {}, sweep.Launch(launcher="slurm"))


def test_main_exit_status_says_whether_every_run_finished(monkeypatch):
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: [{"run": "x", "status": "failed", "message": "boom"}])
    assert sweep.main(["--archs", "wrn_16_4"]) == 1


# ---------------------------------------------------------------- the notebooks themselves

def test_train_notebook_has_literal_parameters_and_no_outputs():
    nb = nbformat.read(TRAIN_NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    names = {}
    for line in code[0].source.splitlines():
        name, _, value = line.partition("#")[0].partition("=")
        if value.strip():
            names[name.strip()] = eval(value, {})  # literals only: eval without names must work
    assert set(names) >= {"arch", "recipe", "epochs", "batch_size", "seed", "dataset", "data_dir", "run_dir",
                          "device", "limit_train", "limit_test"}
    assert names["dataset"] == "synthetic" and not names["run_dir"].startswith("results")
    assert all(not cell.get("outputs") for cell in code), "commit train.ipynb without outputs"
    assert "train(config, resume=True" in code[1].source


@pytest.mark.slow
def test_papermill_parameter_of_the_wrong_type_fails_naming_it(tmp_path):
    import papermill
    from papermill.exceptions import PapermillExecutionError
    run_dir = tmp_path / "run"
    with pytest.raises(PapermillExecutionError) as error:
        papermill.execute_notebook(str(TRAIN_NOTEBOOK), str(tmp_path / "out.ipynb"), cwd=str(TRAIN_NOTEBOOK.parent),
                                   parameters={"epochs": "three", "run_dir": str(run_dir), "limit_train": 64,
                                               "limit_test": 64}, progress_bar=False)
    assert error.value.ename == "ConfigError"
    assert "epochs='three'" in error.value.evalue
    assert not (run_dir / records.RUN_FILE).exists()


def test_sweep_reports_a_failed_notebook_and_goes_on(tmp_path, monkeypatch):
    import papermill
    from papermill.exceptions import PapermillExecutionError
    calls = []

    def execute_notebook(input_path, output_path, parameters, **kwargs):
        calls.append(parameters["arch"])
        raise PapermillExecutionError(cell_index=2, exec_count=1, source="", ename="DataError",
                                      evalue="CIFAR-10 not found in data: pass --download", traceback=[])

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    outcomes = sweep.run_sweep(["preact_resnet20", "wrn_16_4"], [0], tmp_path, {"epochs": 3},
                               IN_PROCESS, notebook=str(TRAIN_NOTEBOOK))
    assert calls == ["preact_resnet20", "wrn_16_4"]
    assert [o["status"] for o in outcomes] == ["failed", "failed"]
    assert outcomes[0]["message"].startswith("CIFAR-10 not found in data")
    assert sweep.main(["--archs", "wrn_16_4", "--results", str(tmp_path / "other"), "--launcher", "debug"]) == 1


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _interrupt_once_checkpointed(run_dir: Path, sent: list) -> None:
    """Once `run_dir` holds a checkpoint, send its job the signal Slurm sends before a time
    limit or a preemption (and submitit's local controller before its timeout)."""
    while True:
        try:
            record = records.read_run(run_dir)
        except ValueError:
            record = {"status": None, "epochs_done": 0}
        if record.status == "complete":
            return  # too late: the test's assertions say so
        if record.epochs_done >= 1:
            kernel = int((run_dir / ".lock").read_text().split()[1])  # "pid N on HOST", written by train()
            os.kill(_parent_pid(kernel), signal.SIGUSR2)  # the job's process, which started the kernel
            sent.append(record.epochs_done)
            return
        time.sleep(0.05)


def _printed(notebook_path: Path) -> str:
    executed = nbformat.read(notebook_path, as_version=4)
    return "".join(output.get("text", "") for cell in executed.cells if cell.cell_type == "code"
                   for output in cell.outputs)


@pytest.mark.slow
def test_local_sweep_of_two_runs_requeues_an_interrupted_one_which_resumes_then_skips_both(tmp_path):
    parameters = {"epochs": 4, "limit_train": 192, "limit_test": 64, "batch_size": 64, "device": "cpu",
                  "dataset": "synthetic"}
    interrupted, other = tmp_path / "preact_resnet20-seed0", tmp_path / "preact_resnet20-seed1"
    sent = []
    interrupter = threading.Thread(target=_interrupt_once_checkpointed, args=(interrupted, sent), daemon=True)
    interrupter.start()
    outcomes = sweep.run_sweep(["preact_resnet20"], [0, 1], tmp_path, parameters, sweep.Launch(jobs=2, poll_s=0.2),
                               notebook=str(TRAIN_NOTEBOOK))
    interrupter.join(timeout=5)
    assert sent, "the run finished before it could be interrupted"
    assert [(o["run"], o["status"]) for o in outcomes] == [("preact_resnet20-seed0", "complete"),
                                                          ("preact_resnet20-seed1", "complete")], outcomes
    # submitit called the job's checkpoint() and ran it again: its log says so
    logs = "".join(path.read_text() for path in (tmp_path / sweep.LOG_FOLDER).glob("*/*_log.out"))
    assert "preact_resnet20-seed0: interrupted; requeued" in logs
    assert "preact_resnet20-seed1: interrupted" not in logs
    # ... and the second execution resumed from the checkpoint instead of starting over
    printed = _printed(interrupted / "train.ipynb")
    assert "epoch   4/4" in printed and "epoch   1/4" not in printed, printed
    assert "epoch   1/4" in _printed(other / "train.ipynb")
    for run_dir in (interrupted, other):
        record = records.read_run(run_dir)
        assert record.status == "complete" and record.epochs_done == 4
        assert [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]] == [
            1, 2, 3, 4]
        executed = nbformat.read(run_dir / "train.ipynb", as_version=4)
        glued = {output.metadata.get("scrapbook", {}).get("name") for cell in executed.cells
                 if cell.cell_type == "code" for output in cell.outputs if "metadata" in output}
        assert {"test_error", "seconds_per_epoch", "params"} <= glued
        assert any("image/png" in output.get("data", {}) for cell in executed.cells if cell.cell_type == "code"
                   for output in cell.outputs)
    again = sweep.run_sweep(["preact_resnet20"], [0, 1], tmp_path, parameters, notebook=str(TRAIN_NOTEBOOK))
    assert [o["status"] for o in again] == ["skipped", "skipped"]


@pytest.mark.slow
def test_local_sweep_runs_notebooks_in_separate_processes_one_gpu_each(tmp_path):
    # A stand-in notebook that writes a complete record, the id of the process that started
    # its kernel and the GPUs it was given.
    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                 "display_name": "Python 3"}})
    parameters = nbformat.v4.new_code_cell('arch = "x"\nseed = 0\nrun_dir = ""')
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [nbformat.v4.new_markdown_cell("# Training run"), parameters, nbformat.v4.new_code_cell(
        "import json, os, pathlib\n"
        "record = {'format': 'reproresnet-run/1', 'status': 'complete', 'config': {'arch': arch, 'seed': seed},\n"
        "          'arch': arch, 'data': {}, 'epochs_planned': 1, 'epochs_done': 1,\n"
        "          'parent': os.getppid(), 'gpus': os.environ['CUDA_VISIBLE_DEVICES']}\n"
        "pathlib.Path(run_dir, 'run.json').write_text(json.dumps(record))")]
    path = tmp_path / "stand-in.ipynb"
    nbformat.write(notebook, path)
    # two GPUs, one run each: both at once, each seeing its own GPU only
    archs = ["preact_resnet20", "wrn_16_4"]
    outcomes = sweep.run_sweep(archs, [0], tmp_path / "results", {}, sweep.Launch(gpus=(0, 1), poll_s=0.2),
                               notebook=str(path))
    assert [o["status"] for o in outcomes] == ["complete", "complete"]
    written = [json.loads((tmp_path / "results" / f"{arch}-seed0" / "run.json").read_text()) for arch in archs]
    parents = {record["parent"] for record in written}
    assert len(parents) == 2 and os.getpid() not in parents  # each kernel started by its own job
    assert sorted(record["gpus"] for record in written) == ["0", "1"]


def test_local_jobs_running_at_once_divide_the_cores_between_them(tmp_path, monkeypatch):
    """Four local jobs at once on a 4-core machine: one CPU thread each, not four each."""
    monkeypatch.setattr(sweep.os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.setattr(sweep.os, "getloadavg", lambda: (0.0, 0.0, 0.0), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    submitted = []

    class Job:
        job_id, state = "1", "DONE"
        paths = type("Paths", (), {"stdout": "log", "stderr": "log"})

        def __init__(self, run):
            self.run = run

        def done(self):
            return True

        def result(self):
            return {"run": self.run.name, "status": "complete", "message": None}

    class Executor:
        def update_parameters(self, **kwargs):
            pass

        def submit(self, run):
            submitted.append(run)
            return Job(run)

    monkeypatch.setattr(sweep, "make_executor", lambda launch, folder: Executor())
    runs = sweep.run_sweep(["preact_resnet20"], [0, 1, 2, 3], tmp_path, {"device": "cpu"},
                           sweep.Launch(jobs=4, poll_s=0), notebook=str(TRAIN_NOTEBOOK))
    assert [o["status"] for o in runs] == ["complete"] * 4
    assert [run.parameters["threads"] for run in submitted] == [1, 1, 1, 1]
    submitted.clear()
    sweep.run_sweep(["preact_resnet20"], [4], tmp_path, {"device": "cpu", "threads": 3},
                    sweep.Launch(jobs=1, poll_s=0), notebook=str(TRAIN_NOTEBOOK))
    assert submitted[0].parameters["threads"] == 3  # a choice given is kept
