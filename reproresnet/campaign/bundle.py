"""Pack a campaign directory into a few bounded files, and restore it without rolling a run back.

A GPU slot hands back at most 8 files of at most 16 MiB each, 64 MiB in all. `bundle`
writes one gzipped tar of everything a later call needs (run records, metrics, executed
notebooks, logs, and the checkpoints of unfinished runs; a complete run's checkpoint is
left out), cut into parts of at most 16 MiB, then a manifest with the sha256 of every part
and every file. The manifest is written last, atomically: a bundle without one is
incomplete, and `unbundle` refuses it, so a bundle is either complete or absent. `unbundle`
checks everything before it writes anything, and restores each run only where the run is
not already further along (see `unbundle`).

    python -m reproresnet bundle runs/campaign --to $OUT
    python -m reproresnet unbundle $OUT --to results
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import tarfile
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from .. import config, records, rundir
from ..rundir import RunDirError

FORMAT = "reproresnet-bundle/1"
MANIFEST = "bundle.json"
# The last GPU slot's bundle, committed beside results/ (bench/campaign.sh restores it): the
# checkpoints of the unfinished runs it lists are what makes them resumable from a clone.
COMMITTED = "campaign-bundle"
# A committed bundle must stay under 40 MB (the repository's limit on a commit's files); 40 MiB of
# raw checkpoints gzip to about 39 MB, so a slot starts no run that would leave more unfinished.
MAX_UNFINISHED_MIB = 40.0
MiB = 2**20
MAX_FILES, MAX_FILE_BYTES, MAX_TOTAL_BYTES = 8, 16 * MiB, 64 * MiB
CHECKPOINTS = (records.CHECKPOINT_FILE, records.BEST_FILE)


class BundleError(RuntimeError):
    """A bundle that cannot be written within its limits, or cannot be restored."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def bundled_files(src: Path, exclude: Path | None = None) -> list[Path]:
    """The files a later call needs, relative to `src`: no locks, no temporaries of killed
    writers, no checkpoints of complete runs, nothing under `exclude` (the bundle's own folder)."""
    chosen = []
    excluded = exclude.resolve() if exclude is not None else None
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        name = path.name
        if name == records.LOCK_FILE or rundir.is_temporary(name) or "__pycache__" in path.parts:
            continue
        if excluded is not None and excluded in path.resolve().parents:
            continue
        if name in CHECKPOINTS and _complete(path.parent):
            continue
        chosen.append(path.relative_to(src))
    return chosen


def _complete(run_dir: Path) -> bool:
    try:
        return records.read_run(run_dir).status == "complete"
    except ValueError:
        return False


def bundle(src, out, *, name: str = "campaign", max_files: int = MAX_FILES,
           max_file_bytes: int = MAX_FILE_BYTES, max_total_bytes: int = MAX_TOTAL_BYTES) -> dict:
    """Bundle directory `src` into `out`; returns the manifest. Replaces an earlier bundle
    in `out` (its manifest goes first, so no manifest ever names a missing part)."""
    src, out = Path(src), Path(out)
    check_name(name)
    if not src.is_dir():
        raise BundleError(f"{src} is not a directory: expected the campaign directory to bundle")
    files = bundled_files(src, exclude=out)
    unnamed = [str(rel) for rel in files if not all(map(records.is_safe_name, rel.parts))]
    if unnamed:  # unbundle would refuse the bundle: say so now, before a part is written
        raise BundleError(f"{src / unnamed[0]} cannot be bundled: each part of a bundled path must be "
                          f"{records.NAME_RULE}; rename or remove it")
    listing = [{"path": str(rel), "bytes": (src / rel).stat().st_size, "sha256": sha256(src / rel)} for rel in files]
    # An anonymous temporary file: a process killed here leaves nothing behind in `out`.
    with tempfile.TemporaryFile() as packed:
        with tarfile.open(fileobj=packed, mode="w:gz", compresslevel=6) as tar:
            for rel in files:
                tar.add(src / rel, arcname=str(rel), recursive=False)
        size = packed.tell()
        n_parts = max(1, -(-size // max_file_bytes))
        if n_parts + 1 > max_files or size + 64 * 1024 > max_total_bytes:
            largest = sorted(listing, key=lambda f: -f["bytes"])[:3]
            raise BundleError(
                f"{src} packs into {size / MiB:.1f} MiB ({n_parts} parts of at most {max_file_bytes / MiB:g} MiB), "
                f"over the limit of {max_files - 1} parts and {max_total_bytes / MiB:g} MiB; largest files: "
                + ", ".join(f"{f['path']} ({f['bytes'] / MiB:.1f} MiB)" for f in largest))
        out.mkdir(parents=True, exist_ok=True)
        _remove_bundle(out, name)
        packed.seek(0)
        parts = []
        for index in range(n_parts):
            chunk = packed.read(max_file_bytes)
            part = f"{name}.part{index:02d}"
            rundir.write_atomic(out / part, lambda file: file.write(chunk))
            parts.append({"name": part, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {"format": FORMAT, "name": name, "created": records.now(), "source": str(src),
                "parts": parts, "files": listing}
    rundir.write_json(out / _manifest_name(name), manifest)
    return manifest


def checkpoint_kept(run_dir: Path) -> bool:
    """Whether a stopped run can resume: its checkpoint is kept beside its record, or in the
    committed bundle of the results directory's repository (checkpoints themselves are never
    committed in results/)."""
    run_dir = Path(run_dir)
    committed = run_dir.resolve().parent.parent / COMMITTED
    return (run_dir / records.CHECKPOINT_FILE).exists() or run_dir.name in bundled_checkpoints(committed)


@functools.lru_cache(maxsize=None)
def bundled_checkpoints(bundle_dir: Path) -> frozenset[str]:
    """The runs whose checkpoint a bundle's manifest lists (none if there is no readable one)."""
    try:
        files = json.loads((Path(bundle_dir) / MANIFEST).read_text()).get("files", [])
        paths = [Path(entry["path"]) for entry in files]
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return frozenset()
    return frozenset(path.parent.name for path in paths if path.name == records.CHECKPOINT_FILE)


def check_name(name: str) -> None:
    """The bundle's name is the stem of its file names in its folder: a safe name, never a path."""
    if not records.is_safe_name(name):
        raise BundleError(f"--name {name!r} is not valid: expected {records.NAME_RULE}")


def _manifest_name(name: str) -> str:
    return MANIFEST if name == "campaign" else f"{name}.{MANIFEST}"


def _remove_bundle(out: Path, name: str) -> None:
    (out / _manifest_name(name)).unlink(missing_ok=True)
    for part in out.glob(f"{name}.part[0-9][0-9]"):
        part.unlink()


def read_manifest(bundle_dir, name: str = "campaign") -> dict:
    """The bundle's manifest, refused (BundleError) unless every part is a file name in
    `bundle_dir` and every file a relative path that stays inside the destination."""
    check_name(name)
    path = Path(bundle_dir) / _manifest_name(name)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path} is missing or unreadable ({error}): no complete bundle in {bundle_dir} "
                          f"(a bundle whose writer was killed has parts but no manifest)") from error
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    if found != FORMAT:
        raise BundleError(f"{path}: format {found!r} is not {FORMAT!r}")
    for key, field in (("parts", "name"), ("files", "path")):
        entries = manifest.get(key)
        if not isinstance(entries, list) or not all(
                isinstance(e, dict) and isinstance(e.get(field), str) and isinstance(e.get("sha256"), str)
                for e in entries):
            raise BundleError(f"{path}: {key!r} must be a list of entries with a {field!r} and a 'sha256'")
    for part in manifest["parts"]:
        if Path(part["name"]).name != part["name"] or part["name"] in ("", ".", ".."):
            raise BundleError(f"{path}: part {part['name']!r} is not a file name in {bundle_dir}")
    for entry in manifest["files"]:
        rel = PurePosixPath(entry["path"])
        if rel.is_absolute() or str(rel) != entry["path"] or not all(map(records.is_safe_name, rel.parts)):
            raise BundleError(f"{path}: file {entry['path']!r} is not a relative path inside the destination "
                              f"whose every part is {records.NAME_RULE}")
    return manifest


def unbundle(bundle_dir, dest, *, name: str = "campaign") -> dict:
    """Restore the bundle in `bundle_dir` into `dest`; returns {"restored": paths relative to
    `dest`, "skipped": {run directory: why}}.

    Everything is checked before anything is created: the manifest, every part and file
    against its sha256, and every checkpoint (it must load as tensors and plain values).
    Each run directory is then restored under its lock, unless the run there is further along
    (more epochs done, or complete at as many): a run is never rolled back, nor, when one was
    kept, the campaign's own files beside the runs (its call history, the self-check). Its files are
    replaced one by one, atomically, in the order training writes them (checkpoints first,
    run.json last), and the checkpoints the bundle's run no longer has are removed last, so
    a killed unbundle leaves each run either as it was or resuming as the bundle has it;
    unbundling again completes it."""
    bundle_dir, dest = Path(bundle_dir), Path(dest)
    manifest = read_manifest(bundle_dir, name)
    missing = [part["name"] for part in manifest["parts"] if not (bundle_dir / part["name"]).is_file()]
    if missing:
        raise BundleError(f"{bundle_dir}: part(s) {', '.join(missing)} missing: the bundle is incomplete")
    expected = {entry["path"]: entry for entry in manifest["files"]}
    with tempfile.TemporaryDirectory(prefix="reproresnet-unbundle-") as staging:
        staging = Path(staging)
        bundled = _unpack(bundle_dir, manifest, expected, staging)
        dest.mkdir(parents=True, exist_ok=True)
        restored, skipped = [], {}
        for run, files in _by_run(expected):
            where = run or PurePosixPath(".")
            if run is None and skipped:  # runs here are further along: so is the campaign's own state
                kept = [rel for rel in files if (dest / rel).exists()]
                files = [rel for rel in files if rel not in kept]
                if kept:
                    skipped[", ".join(map(str, kept))] = "kept: runs here are further along than the bundle's"
            why = _restore_run(staging / where, dest / where, files, locked=run is not None,
                               bundled=bundled.get(where))
            if why:
                skipped[str(run)] = why
            else:
                restored += [str(where / rel) for rel in files]
    refused = sorted(run for run, why in skipped.items() if getattr(why, "refused", False))
    return {"restored": sorted(restored), "skipped": skipped, "refused": refused}


# The files that make a directory a run directory, and the order training writes a run's files in:
# checkpoints, then logs and notebooks, then metrics.csv, then run.json.
RUN_MARKERS = (records.CHECKPOINT_FILE, records.RUN_FILE)
WRITE_RANK = {records.BEST_FILE: 0, records.CHECKPOINT_FILE: 1, records.METRICS_FILE: 3, records.RUN_FILE: 4}


def _by_run(paths) -> list[tuple[PurePosixPath | None, list[PurePosixPath]]]:
    """The bundled `paths` by run directory, in name order, each run's in write order, relative
    to it; then (None, the files outside any run)."""
    runs = sorted({PurePosixPath(rel).parent for rel in paths if PurePosixPath(rel).name in RUN_MARKERS},
                  key=lambda run: -len(run.parts))  # the innermost run directory first
    groups: dict = {}
    for rel in sorted(paths, key=lambda rel: (WRITE_RANK.get(PurePosixPath(rel).name, 2), rel)):
        run = next((run for run in runs if run in PurePosixPath(rel).parents), None)
        groups.setdefault(run, []).append(PurePosixPath(rel).relative_to(run or "."))
    return sorted(groups.items(), key=lambda group: (group[0] is None, str(group[0])))


def _unpack(bundle_dir: Path, manifest: dict, expected: dict, staging: Path) -> dict:
    """The bundle's files into `staging`, each checked against the manifest; BundleError if not.
    Returns how far each bundled run with a checkpoint got (`rundir.how_far`), by run directory."""
    with tempfile.TemporaryFile() as packed:
        for part in manifest["parts"]:
            data = (bundle_dir / part["name"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != part["sha256"]:
                raise BundleError(f"{bundle_dir / part['name']} does not match its sha256 in the manifest")
            packed.write(data)
        packed.seek(0)
        try:
            with tarfile.open(fileobj=packed, mode="r:gz") as tar:
                members = tar.getmembers()
                names = {m.name for m in members}
                wrong = {"unlisted": sorted(names - set(expected)), "missing": sorted(set(expected) - names),
                         "not files": sorted(m.name for m in members if not m.isfile())}
                if any(wrong.values()):
                    raise BundleError(f"the bundle in {bundle_dir} does not hold what its manifest lists: " +
                                      "; ".join(f"{what} {found[:3]}" for what, found in wrong.items() if found))
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(staging, **extra)
        except (tarfile.TarError, EOFError, OSError) as error:
            raise BundleError(f"the bundle in {bundle_dir} cannot be unpacked ({error})") from None
    bundled = {}
    for rel, entry in expected.items():
        if sha256(staging / rel) != entry["sha256"]:
            raise BundleError(f"{rel} does not match its sha256 after unpacking")
        if Path(rel).name in CHECKPOINTS:
            try:
                checkpoint = rundir.read_checkpoint(staging / rel)
            except ValueError as error:
                raise BundleError(f"the bundle's {rel} is refused: {error}") from None
            if Path(rel).name == records.CHECKPOINT_FILE:
                run = PurePosixPath(rel).parent
                bundled[run] = Bundled(rundir.how_far(staging / run, checkpoint), checkpoint.get("config"))
    for rel in expected:
        if PurePosixPath(rel).name == records.RUN_FILE:
            run = PurePosixPath(rel).parent
            record = _bundled_record(staging, PurePosixPath(rel))
            saved = bundled.get(run, Bundled()).config
            changed = config.recorded_differences(record.config, saved) if isinstance(saved, dict) else {}
            if changed:
                raise BundleError(f"the bundle's {rel} and its checkpoint are other experiments ({_changes(changed)})")
            bundled[run] = Bundled(bundled.get(run, Bundled()).progress, record.config)
    return bundled


@dataclass(frozen=True)
class Bundled:
    """What the bundle says of one run: how far it got (from its checkpoint), and its config."""

    progress: tuple[int, bool] | None = None
    config: dict | None = None


def _bundled_record(staging: Path, rel: PurePosixPath) -> records.Record:
    """The bundle's run.json at `rel`, read as every reader reads a record (records.read_run)."""
    try:
        return records.read_run(staging / rel.parent)
    except ValueError as error:
        raise BundleError(f"the bundle's {rel} is refused: {str(error).removeprefix(f'{staging / rel}: ')}") from None


def _changes(changed: dict) -> str:
    return ", ".join(f"{key}: {here!r} here, {there!r} in the bundle" for key, (here, there) in changed.items())


def _local_config(run_dir: Path) -> dict | None:
    """The config of the run of ours in `run_dir`, from its record or else its checkpoint; None
    if neither can be read."""
    try:
        return records.read_run(run_dir).config
    except ValueError:
        pass
    try:
        saved = rundir.read_checkpoint(run_dir / records.CHECKPOINT_FILE).get("config")
    except ValueError:
        return None
    return saved if isinstance(saved, dict) else None


def _restore_run(staged: Path, target: Path, files: list[PurePosixPath], locked: bool,
                 bundled: Bundled | None = None) -> Skipped | None:
    """`files` of `staged` into `target`, a run directory under its lock (`locked`) or the
    files outside any run; returns why not, if they were not. `bundled`: what the bundle says
    of the staged run, if known. A run is restored only into a folder of ours (rundir.check_ours),
    over a run of the same experiment and seed (as `train --resume` requires) that is not further along."""
    bundled = bundled or Bundled()
    with ExitStack() as lock:
        if locked:
            try:
                rundir.check_ours(target, instead="unbundle into another --to")
                lock.enter_context(rundir.run_dir_lock(target))
            except RunDirError as error:  # not ours, or in use: a run is training there
                return Skipped(str(error), refused=True)
            rundir.remove_orphans(target)
            here, progress = rundir.how_far(target), bundled.progress or rundir.how_far(staged)
            local = _local_config(target) if here > (0, False) else None
            changed = config.recorded_differences(local, bundled.config) if local and bundled.config else {}
            if changed:
                return Skipped(f"the run here is another experiment than the bundle's ({_changes(changed)}): kept; "
                               f"unbundle into another --to to have both", refused=True)
            if here > progress:
                return Skipped(f"the run here is further along ({_describe(here)}) than the bundle's "
                               f"({_describe(progress)}): kept")
        for rel in files:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            rundir.write_unless_same(target / rel, (staged / rel).read_bytes())
        for name in CHECKPOINTS if locked else ():
            if not (staged / name).exists():
                (target / name).unlink(missing_ok=True)  # behind the bundle's complete record
    return None


class Skipped(str):
    """Why a run was not restored; `refused`: it could not be (another experiment, a folder
    not ours, in use), rather than kept because the run here is further along."""

    refused: bool

    def __new__(cls, why: str, refused: bool = False):
        skipped = super().__new__(cls, why)
        skipped.refused = refused
        return skipped


def _describe(progress: tuple[int, bool]) -> str:
    epochs, complete = progress
    return f"{epochs} epochs done" + (", complete" if complete else "")


def render_runs(run_dirs, notebook: str | None = None) -> list[dict]:
    """Each complete run's book page: `notebook` (default: the repository's train.ipynb)
    executed by papermill with the run's own recorded settings, so `train(resume=True)` only
    reads the complete run (no training). An unfinished run is not rendered (its notebook
    would train it)."""
    import papermill

    from .. import launch
    notebook = notebook or launch.DEFAULT_NOTEBOOK
    names = set(papermill.inspect_notebook(notebook))
    outcomes = []
    for run_dir in map(Path, run_dirs):
        record = records.read_run(run_dir)
        if record.status != "complete":
            outcome = {"run": run_dir.name, "status": "incomplete",
                       "message": f"{record.epochs_done}/{record.epochs_planned} epochs: not rendered"}
        else:
            parameters = {k: v for k, v in record.config.items() if k in names}
            missing = list(config.differences(record.config, launch.notebook_config(parameters)))  # no parameter for them
            if missing:
                outcome = {"run": run_dir.name, "status": "failed",
                           "message": f"{notebook} has no parameter for the recorded {missing}"}
            else:
                outcome = launch.execute_run(notebook, str(run_dir), {**parameters, "run_dir": str(run_dir)},
                                      progress=False)
        print(f"{outcome['run']}: {outcome['status']}" + (f" ({outcome['message']})" if outcome["message"] else ""))
        outcomes.append(outcome)
    return outcomes


def _parser(command: str, source: tuple[str, str], to: tuple[str, str]) -> argparse.ArgumentParser:
    """What both commands take: SOURCE --to TO [--name NAME] (metavar and help of each)."""
    parser = argparse.ArgumentParser(prog=f"python -m reproresnet {command}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar=source[0], help=source[1])
    parser.add_argument("--to", required=True, metavar=to[0], help=to[1])
    parser.add_argument("--name", default="campaign", help="file name stem of the parts (default: campaign)")
    return parser


def _run(parser: argparse.ArgumentParser, argv: list[str] | None, run: Callable[[argparse.Namespace], int],
         again: str) -> int:
    """`run` on the parsed `argv`; a BundleError, a full disk or a file system that refuses a
    write is a one-line error and exit status 2. `again`: what running the command again does."""
    args = parser.parse_args(argv)
    try:
        return run(args)
    except rundir.DiskFull as full:
        error = full.with_advice(f"free some space and run {parser.prog} again ({again})")
    except (BundleError, RunDirError) as refused:
        error = refused
    except OSError as refused:  # a read-only file system, a file where a folder should be
        error = rundir.refused_by_os(refused, f"choose a writable --to, or run {parser.prog} again once it is "
                                              f"writable ({again})")
    print(f"{parser.prog}: error: {error}", file=sys.stderr)
    return 2


def main_bundle(argv: list[str] | None = None) -> int:
    def run(args: argparse.Namespace) -> int:
        manifest = bundle(args.source, args.to, name=args.name)
        total = sum(part["bytes"] for part in manifest["parts"])
        print(f"bundled {len(manifest['files'])} files of {args.source} into {len(manifest['parts'])} part(s), "
              f"{total / MiB:.1f} MiB, in {args.to}")
        return 0
    parser = _parser("bundle", ("DIR", "the campaign directory"), ("OUT", "where the parts and bundle.json go"))
    return _run(parser, argv, run, "it writes the whole bundle anew; until then unbundle refuses the parts "
                                   "left, which have no manifest")


def main_unbundle(argv: list[str] | None = None) -> int:
    def run(args: argparse.Namespace) -> int:
        done = unbundle(args.source, args.to, name=args.name)
        print(f"restored {len(done['restored'])} files into {args.to}")
        for run, why in done["skipped"].items():
            print(f"skipped {run}: {why}")
        if done["refused"]:
            print(f"{parser.prog}: error: {len(done['refused'])} run(s) of the bundle not restored: "
                  f"{', '.join(done['refused'])} (see above)", file=sys.stderr)
            return 1
        if not args.render:
            return 0
        run_dirs = sorted({Path(args.to) / Path(rel).parent for rel in done["restored"]
                           if Path(rel).name == records.RUN_FILE})
        outcomes = render_runs(run_dirs)
        return 0 if all(o["status"] in ("complete", "incomplete") for o in outcomes) else 1
    parser = _parser("unbundle", ("OUT", "the folder holding bundle.json and its parts"),
                     ("DIR", "where to restore (e.g. results)"))
    parser.add_argument("--render", action="store_true",
                        help="then execute notebooks/train.ipynb (papermill) for every complete run restored, "
                             "without training: the book's page of each run")
    return _run(parser, argv, run, "it restores what is missing; each run is as it was or as the bundle has it")
