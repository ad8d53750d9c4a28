"""Writing outputs so that a failed run leaves nothing half-written.

A run builds its output in a sibling temporary directory and renames it into place at the end;
an older output is removed only after the new one is in place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import InputError


def check_output_dir(output: Path, marker: str) -> None:
    """Refuse an output path that is a file, a foreign non-empty directory (no `marker`), or unwritable."""
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not (output / marker).exists():
        raise InputError(
            f"--output {output}: directory is not empty and was not written by this tool (no {marker})"
        )
    parent = output.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--output {output}: cannot create parent directory ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise InputError(f"--output {output}: directory {parent} is not writable")


def fresh_work_dir(output: Path) -> Path:
    work = output.resolve().parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished directory into place; an older one at dst is removed only afterwards."""
    old = None
    if dst.exists():
        old = dst.resolve().parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
