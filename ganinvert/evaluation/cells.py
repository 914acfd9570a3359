"""The evaluation's cell files: ``OUT/cells/<key>.json`` (the completion marker) and its PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, atomic_write_json
from .plan import CellTask

CELL_FORMAT = "ganinvert-evaluate-cell/1"


def cell_json_path(out: Path, key: str) -> Path:
    return Path(out) / "cells" / f"{key}.json"


def read_cell(out: Path, task: CellTask) -> dict[str, Any] | None:
    """The finished record of ``task``, or None if it is missing, unreadable or stale."""
    path = cell_json_path(out, task.key)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if record.get("format") != CELL_FORMAT or record.get("fingerprint") != task.fingerprint:
        return None
    if not all((path.parent / name).is_file() for name in record.get("files", [])):
        return None
    return record


def write_cell(out: Path, output: dict[str, Any]) -> None:
    """Write a cell's files, then its JSON (the completion marker), each atomically."""
    json_path = cell_json_path(out, output["key"])
    for name, data in output["files"].items():
        atomic_write_bytes(json_path.parent / name, data)
    atomic_write_json(json_path, output["record"])
