"""The run folder's record of its `source:` checkpoints (manifest `sources`, `source_snapshots`): rows of a
model are never joined by rows of another checkpoint under the same name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ptq_bench.cache import first_difference, folder_digests
from ptq_bench.data import file_digest
from ptq_bench.errors import PtqBenchError
from ptq_bench.recipe import Recipe, source_info
from ptq_bench.results import Row

SNAPSHOTS = "source_snapshots"  # manifest key: model name -> the hub snapshot (commit) its rows came from


def check_sources(recipe: Recipe, manifest: dict[str, Any], rows: list[Row]) -> None:
    """Record each `source:` checkpoint's file digests (its resolved folder or file: a `~` path, a cached
    hub snapshot, a GGUF) and, for a hub id, the commit of the snapshot refs/main named. A model with stored
    rows whose checkpoint changed since is an error: those rows came from the old files, and a user's
    checkpoint cannot be rebuilt. A model without rows (a first run refused or stopped before its base row)
    records the files as they are now."""
    known = manifest.setdefault("sources", {})
    stored = {row.model for row in rows}
    for name, spec in recipe.models.items():
        info = None if spec.source is None else source_info(recipe, name)
        if info is None or info.path is None:  # trained here, or a hub id not downloaded yet
            continue
        path = Path(info.path)
        have = folder_digests(path, file_digest) if path.is_dir() else {path.name: file_digest(path)}
        diff = first_difference(known[name], have) if name in known and name in stored else None
        if diff is not None:
            raise PtqBenchError(_changed(name, info.source, path, diff, manifest.get(SNAPSHOTS, {}).get(name)))
        known[name] = have
        if info.form == "hub":  # huggingface_hub's layout: snapshots/<commit>
            manifest.setdefault(SNAPSHOTS, {})[name] = path.name


def _changed(name: str, source: str, path: Path, diff: str, snapshot: str | None) -> str:
    if snapshot is not None and snapshot != path.name:  # refs/main moved: another revision, not an edited file
        return (f"models.{name}.source: hub id '{source}' now reads snapshot {path.name[:12]} from the local hub "
                f"cache, but this run folder's rows of '{name}' came from snapshot {snapshot[:12]}; set a "
                "different output_dir")
    where = path / diff.split(" ")[0] if path.is_dir() else path
    return (f"models.{name}.source: {where} changed since this run folder's rows of '{name}' were computed "
            f"({diff}); restore it or set a different output_dir")
