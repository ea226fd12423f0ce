"""Pack a campaign directory into a few bounded files, and restore it byte for byte.

A GPU slot hands back at most 8 files of at most 16 MiB each, 64 MiB in all. `bundle`
writes one gzipped tar of everything a later call needs (run records, metrics, executed
notebooks, logs, and the checkpoints of unfinished runs; a complete run's checkpoint is
left out), cut into parts of at most 16 MiB, then a manifest with the sha256 of every part
and every file. The manifest is written last, atomically: a bundle without one is
incomplete, and `unbundle` refuses it, so a bundle is either complete or absent.

    python -m reproresnet bundle runs/campaign --to $OUT
    python -m reproresnet unbundle $OUT --to results
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

from . import records

FORMAT = "reproresnet-bundle/1"
MANIFEST = "bundle.json"
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


def bundled_files(src: Path) -> list[Path]:
    """The files a later call needs, relative to `src`: no locks, no temporaries of killed
    writers, no checkpoints of complete runs."""
    chosen = []
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        name = path.name
        if name == ".lock" or (name.startswith(".") and name.endswith(".tmp")) or "__pycache__" in path.parts:
            continue
        if name in CHECKPOINTS and _complete(path.parent):
            continue
        chosen.append(path.relative_to(src))
    return chosen


def _complete(run_dir: Path) -> bool:
    try:
        return records.read_run(run_dir).get("status") == "complete"
    except ValueError:
        return False


def bundle(src, out, *, name: str = "campaign", max_files: int = MAX_FILES,
           max_file_bytes: int = MAX_FILE_BYTES, max_total_bytes: int = MAX_TOTAL_BYTES) -> dict:
    """Bundle directory `src` into `out`; returns the manifest. Replaces an earlier bundle
    in `out` (its manifest goes first, so no manifest ever names a missing part)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise BundleError(f"{src} is not a directory: expected the campaign directory to bundle")
    files = bundled_files(src)
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
            records.write_atomic(out / part, lambda file: file.write(chunk))
            parts.append({"name": part, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {"format": FORMAT, "name": name, "created": records.now(), "source": str(src),
                "parts": parts, "files": listing}
    records.write_json(out / _manifest_name(name), manifest)
    return manifest


def _manifest_name(name: str) -> str:
    return MANIFEST if name == "campaign" else f"{name}.{MANIFEST}"


def _remove_bundle(out: Path, name: str) -> None:
    (out / _manifest_name(name)).unlink(missing_ok=True)
    for part in out.glob(f"{name}.part[0-9][0-9]"):
        part.unlink()


def read_manifest(bundle_dir, name: str = "campaign") -> dict:
    path = Path(bundle_dir) / _manifest_name(name)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BundleError(f"{path} is missing or unreadable ({error}): no complete bundle in {bundle_dir} "
                          f"(a bundle whose writer was killed has parts but no manifest)") from error
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    return manifest


def unbundle(bundle_dir, dest, *, name: str = "campaign") -> list[str]:
    """Restore the bundle in `bundle_dir` into `dest`, every file checked against its sha256
    and moved into place atomically; returns the restored paths (relative to `dest`)."""
    bundle_dir, dest = Path(bundle_dir), Path(dest)
    manifest = read_manifest(bundle_dir, name)
    expected = {entry["path"]: entry for entry in manifest["files"]}
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.unbundle-*"):  # left by a killed unbundle
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.unbundle-"))
    try:
        with tempfile.TemporaryFile() as packed:
            for part in manifest["parts"]:
                data = (bundle_dir / part["name"]).read_bytes()
                if hashlib.sha256(data).hexdigest() != part["sha256"]:
                    raise BundleError(f"{bundle_dir / part['name']} does not match its sha256 in the manifest")
                packed.write(data)
            packed.seek(0)
            with tarfile.open(fileobj=packed, mode="r:gz") as tar:
                members = tar.getmembers()
                unknown = sorted({m.name for m in members} - set(expected))
                if unknown or not all(m.isfile() for m in members):
                    raise BundleError(f"the bundle in {bundle_dir} holds entries its manifest does not list: "
                                      f"{unknown[:3] or 'non-files'}")
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(staging, **extra)
        for rel, entry in expected.items():
            if sha256(staging / rel) != entry["sha256"]:
                raise BundleError(f"{rel} does not match its sha256 after unpacking")
        for rel in expected:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, dest / rel)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(expected)


def _parser(command: str, source: tuple[str, str], to: tuple[str, str]) -> argparse.ArgumentParser:
    """What both commands take: SOURCE --to TO [--name NAME] (metavar and help of each)."""
    parser = argparse.ArgumentParser(prog=f"python -m reproresnet {command}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar=source[0], help=source[1])
    parser.add_argument("--to", required=True, metavar=to[0], help=to[1])
    parser.add_argument("--name", default="campaign", help="file name stem of the parts (default: campaign)")
    return parser


def _run(parser: argparse.ArgumentParser, argv: list[str] | None, run: Callable[[argparse.Namespace], int]) -> int:
    """`run` on the parsed `argv`; a BundleError is a one-line error and exit status 2."""
    args = parser.parse_args(argv)
    try:
        return run(args)
    except BundleError as error:
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
    return _run(parser, argv, run)


def main_unbundle(argv: list[str] | None = None) -> int:
    def run(args: argparse.Namespace) -> int:
        restored = unbundle(args.source, args.to, name=args.name)
        print(f"restored {len(restored)} files into {args.to}")
        if not args.render:
            return 0
        from .campaign import render_runs
        run_dirs = sorted({Path(args.to) / Path(rel).parent for rel in restored
                           if Path(rel).name == records.RUN_FILE})
        outcomes = render_runs(run_dirs)
        return 0 if all(o["status"] in ("complete", "incomplete") for o in outcomes) else 1
    parser = _parser("unbundle", ("OUT", "the folder holding bundle.json and its parts"),
                     ("DIR", "where to restore (e.g. results)"))
    parser.add_argument("--render", action="store_true",
                        help="then execute notebooks/train.ipynb (papermill) for every complete run restored, "
                             "without training: the book's page of each run")
    return _run(parser, argv, run)
