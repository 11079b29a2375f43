"""Checks on the names and folders a recipe points at, made before anything is written (no torch).

`check_paths` is what `run` checks beyond `validate`: the output and cache folders must be creatable
and writable, and must not be `/`, a system folder, a file, under a file, or the data folder (or in it).
It only looks: it creates nothing.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from ptq_bench.config import short
from ptq_bench.errors import RecipeError

SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_.+-]{1,100}")  # a name used as one folder or file name
SYSTEM_DIRS = ("/proc", "/sys", "/dev")


def check_component(name: str, where: str) -> None:
    """`name` is used as a single file or folder name: ASCII letters, digits, `_ . + -`, 1..100 long,
    not `.` or `..` (so `../../x`, `/abs`, `a/b`, NUL and the empty name are refused)."""
    if not SAFE_COMPONENT.fullmatch(name) or name in (".", ".."):
        raise RecipeError(f"{where}: must be a plain name (1-100 characters of A-Z a-z 0-9 _ . + -, "
                          f"not . or ..), got {short(name)}")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_folder(raw: str, where: str, data_dir: Path | None) -> None:
    """`raw` can be used as a folder to write into (now or after creating it); nothing is created."""
    try:
        _check_folder(Path(raw).expanduser().resolve(), where, data_dir)
    except (OSError, RuntimeError) as exc:  # a link loop, a folder we may not look into
        why = getattr(exc, "strerror", None) or type(exc).__name__  # "File name too long", not just "OSError"
        raise RecipeError(f"{where}: cannot use {short(raw)} ({why})") from None


def _check_folder(path: Path, where: str, data_dir: Path | None) -> None:
    if path == Path(path.anchor):
        raise RecipeError(f"{where}: refusing to write into the root folder {path}")
    for system in SYSTEM_DIRS:
        if _inside(path, Path(system)):
            raise RecipeError(f"{where}: refusing to write under {system} ({short(str(path))})")
    if data_dir is not None and _inside(path, data_dir.resolve()):
        raise RecipeError(f"{where}: {short(str(path))} is the data folder or inside it")
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise RecipeError(f"{where}: {short(str(probe))} is a dangling link")
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == path else f"is under a file ({short(str(probe))})"
        raise RecipeError(f"{where}: {short(str(path))} {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RecipeError(f"{where}: {short(str(probe))} is not writable")


def check_data(recipe: Any) -> Path:
    """The recipe's data folder, after checking that every file it reads exists and is intact JSON lines
    (`data.check_jsonl`; nothing is hashed)."""
    from ptq_bench.data import check_jsonl, resolve_data_dir
    from ptq_bench.eval.harness import FILE_ANSWERS, FILE_FIELDS
    from ptq_bench.recipe import required_data_files

    data_dir = resolve_data_dir(recipe.data_dir)
    for rel in required_data_files(recipe):
        check_jsonl(data_dir, rel, FILE_FIELDS.get(rel, {}), FILE_ANSWERS.get(rel))
    return data_dir


# the cache's folders whose entries a run rebuilds, replaces or clears (prepare, tokens, eval, sweep)
CACHE_FOLDERS = ("models", "tokenizers", "tokens", "kld", "sources", "in_place")


def check_paths(recipe: Any, data_dir: Path | None) -> None:
    """The output and cache folders of `recipe` are usable (see `check_folder`), and the results folder is
    not inside one of the cache's own folders (an artefact found with a foreign file is rebuilt: removed);
    called by `run` after `validate`'s checks and before anything is written."""
    check_folder(str(recipe.out_dir), "output_dir", data_dir)
    check_folder(str(recipe.cache_path), "cache_dir", data_dir)
    out, cache = Path(recipe.out_dir).resolve(), Path(recipe.cache_path).resolve()
    for name in CACHE_FOLDERS:
        if (cache / name).exists() and not (cache / name).is_dir():  # found mid-run: a traceback after the manifest
            raise RecipeError(f"cache_dir: {name} in {short(str(cache))} is not a folder; move it away or set "
                              "another cache_dir")
        if _inside(out, cache / name):
            raise RecipeError(f"output_dir: {short(str(out))} is inside the cache folder {short(str(cache / name))}, "
                              "whose entries ptq-bench rebuilds and removes; set an output_dir outside it")
    from ptq_bench.results import RESULTS

    refuse_links(out)
    if (out / RESULTS).is_file() and not os.access(out / RESULTS, os.W_OK):  # else refused after its first cell
        raise RecipeError(f"output_dir: {RESULTS} is not writable (in {short(str(out))})")
    _refuse_foreign_derived(out)


def _refuse_foreign_derived(out: Path) -> None:
    """A folder that is not a results folder (no results.jsonl, no manifest) but holds a file named as a report's
    (table.md, a plot): the run would overwrite it, and its report remove the ones it does not write."""
    from ptq_bench.report.layouts import derived_files
    from ptq_bench.results import MANIFEST, RESULTS

    if not out.is_dir() or (out / RESULTS).exists() or (out / MANIFEST).exists():
        return
    found = [name for name in derived_files() if (out / name).exists()]
    if found:
        raise RecipeError(f"output_dir: {short(str(out))} is not a results folder but holds {', '.join(found[:3])}, "
                          "which a run would overwrite or remove; give a new or empty folder")


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds `folder` (or would: its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def folder_path(text: str) -> Path:
    """A recipe's folder, `~` expanded; with a `..` in it, resolved as the OS resolves it (through links): made
    as given, `w/../x` also made an empty `w`."""
    path = Path(text).expanduser()
    return Path(os.path.realpath(path)) if ".." in path.parts else path


def refuse_links(run_dir: Path) -> None:
    """A run folder's own files that a run appends to, truncates or writes into (results.jsonl, the lock and its
    owner file, curves/) must not be symbolic links: a folder copied from elsewhere could point them at any file,
    which the run would then write (a torn-line repair truncates it). One line naming the link; nothing written."""
    from ptq_bench.lock import LOCK, LOCK_OWNER
    from ptq_bench.results import CURVES, RESULTS

    for name in (RESULTS, LOCK, LOCK_OWNER, CURVES):
        link = Path(run_dir) / name
        if link.is_symlink():
            raise RecipeError(f"output_dir: {name} in {short(str(run_dir))} is a symbolic link, which a run would "
                              "write through; replace it with a plain file or folder, or give another output_dir")
