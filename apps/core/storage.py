"""Directories in Django storage (local disk or S3): model artifacts and checkpoints move by key."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from django.core.files import File as DjangoFile
from django.core.files.storage import default_storage

logger = logging.getLogger(__name__)

# What a job stores, each under `<area>/<organization id>/<job id>`: its checkpoints, its fine-tuned
# model, and a distillation's teacher labels.
JOB_AREAS = ("checkpoints", "models", "distill")


def job_prefix(area: str, organization_id: str, job_id: str) -> str:
    assert area in JOB_AREAS, area
    return f"{area}/{organization_id}/{job_id}"


def _walk(prefix: str) -> Iterator[str]:
    directories, files = default_storage.listdir(prefix)
    for name in files:
        yield f"{prefix}/{name}"
    for directory in directories:
        yield from _walk(f"{prefix}/{directory}")


def upload_dir(local: Path, prefix: str) -> str:
    """Copies every file under `local` to storage under `prefix` (replacing what was there)."""
    delete_prefix(prefix)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(local).as_posix()}"
        with path.open("rb") as handle:
            saved = default_storage.save(key, DjangoFile(handle))
        if saved != key:  # storage renamed it: a concurrent writer; never keep a half-copy
            raise OSError(f"storage stored {key} as {saved}")
    return prefix


def download_dir(prefix: str, local: Path, keep: Callable[[str], bool] | None = None) -> Path:
    """Copies a stored directory to `local`, atomically: a crash leaves no half-written copy.
    `keep`, given a file's path under the directory, picks the files to copy (default: all)."""
    if local.exists():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=local.parent, prefix=f".{local.name}-"))
    try:
        count = 0
        for key in _walk(prefix):
            if keep is not None and not keep(key[len(prefix) + 1 :]):
                continue
            target = staging / key[len(prefix) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            with default_storage.open(key, "rb") as source, target.open("wb") as out:
                shutil.copyfileobj(source, out, length=1024 * 1024)
            count += 1
        if count == 0:
            raise FileNotFoundError(f"nothing stored under {prefix}")
        staging.rename(local)
    except FileExistsError:
        shutil.rmtree(staging, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return local


def delete_prefix(prefix: str) -> None:
    try:
        keys = list(_walk(prefix))
    except FileNotFoundError:
        return
    for key in keys:
        default_storage.delete(key)


def download_file(key: str, local: Path) -> Path:
    local.parent.mkdir(parents=True, exist_ok=True)
    with default_storage.open(key, "rb") as source, local.open("wb") as out:
        shutil.copyfileobj(source, out, length=1024 * 1024)
    return local


def delete_stored(keys: Iterable[str], prefixes: Iterable[str]) -> None:
    """Deletes stored files and directories. One that fails is logged with its key and the others
    still go: a storage fault leaves an orphan to find in the log, never half a deletion."""
    for key in keys:
        try:
            default_storage.delete(key)
        except Exception:
            logger.exception("could not delete %s from storage", key)
    for prefix in prefixes:
        try:
            delete_prefix(prefix)
        except Exception:
            logger.exception("could not delete %s/ from storage", prefix)
