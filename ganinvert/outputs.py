"""Per-image output folders under a command's ``--out``: their names, who may write them, and
writing each one as a unit.

* **Names** (:func:`output_names`): an image's sanitised stem (:func:`safe_name`, so no name can
  be ``..``, hidden, or hold a path separator), made unique within the run by ``_1``, ``_2`` …
  suffixes that never take another input's own name (compared case-insensitively, as macOS and
  Windows file systems do). The same inputs in the same order always get the same names, so a
  re-run finds its folders. :func:`output_folder` refuses any name that would land outside ``--out``.
* **Locks** (:class:`OutputLocks`): a run holds ``fcntl.flock`` on ``OUT/.locks/<name>.lock`` for
  every name it writes, for as long as it runs; a second run wanting one of them stops at once
  with "in use". The kernel drops a killed run's locks, so nothing needs unlocking by hand.
* **Publishing** (:func:`staged_folder`): a folder is built in ``OUT/.tmp-<name>-<pid>/`` and
  renamed into place, so it appears complete or not at all; replacing one renames the old folder
  to ``OUT/.old-<name>-<pid>/`` first and deletes it after. A complete folder is a run's done
  marker: its record (``metrics.json``, ``discovery.json``) holds the run's :func:`run_id`, and
  :func:`claim_folders` skips, replaces or refuses each existing folder by it.
* **Checkpoints** (:class:`Checkpoints`): an unfinished batch's state is
  ``OUT/.checkpoints/<key>.pt`` (written by the engine) beside ``<key>.json`` naming its images,
  batch size and process; the key is a hash of the batch's names.
* **Leftovers** of killed runs (temporary and replaced folders, temporary checkpoint files) are
  deleted by :func:`sweep_stale` when the names they belong to are locked by this process or the
  process that made them is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

from .errors import GanInvertError
from .io import atomic_write_json

#: Longest name kept as is; longer ones are cut and get a hash of the whole name, so that
#: ``.tmp-<name>-<pid>`` and the files inside a folder stay within the usual 255-byte limit.
MAX_NAME_LENGTH = 200
LOCKS = ".locks"
CHECKPOINTS = ".checkpoints"
TEMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
#: What :func:`safe_name` and :func:`unique_names` produce: no separator, never ``.``/``..`` or hidden.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")
#: The files whose presence (with the record's run id) makes a folder a finished result.
RESULT_FILES = ("result.safetensors", "result.json")


# ----------------------------------------------------------------------------- names
def safe_name(text: str) -> str:
    """``text`` with every character outside ``[A-Za-z0-9._+-]`` replaced by ``_`` and leading and
    trailing dots removed (so never ``.``, ``..`` or hidden); ``_`` when nothing is left."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]", "_", text).strip(".") or "_"
    if len(cleaned) > MAX_NAME_LENGTH:
        cleaned = f"{cleaned[:MAX_NAME_LENGTH - 9]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return cleaned


def unique_names(stems: Sequence[str]) -> list[str]:
    """Safe names of ``stems``, unique case-insensitively: the first of a name keeps it, later ones
    get the first ``_1``, ``_2`` … that is neither another stem's own name nor already given.

    >>> unique_names(["face", "face", "face_1"])
    ['face', 'face_2', 'face_1']
    """
    bases = [safe_name(s) for s in stems]
    taken = {b.casefold() for b in bases}  # every input's own name is reserved for it
    seen: set[str] = set()
    names = []
    for base in bases:
        name = base
        if base.casefold() in seen:
            k = 1
            while f"{base}_{k}".casefold() in taken:
                k += 1
            name = f"{base}_{k}"
            taken.add(name.casefold())
        seen.add(base.casefold())
        names.append(name)
    return names


def output_names(paths: Sequence[Path]) -> list[str]:
    """The output name of each input file (its stem; see :func:`unique_names`)."""
    return unique_names([Path(p).stem for p in paths])


def output_folder(out: Path, name: str) -> Path:
    """``out / name``, refused unless it is a plain name whose folder lies directly in ``out``
    (an existing link at that place pointing elsewhere counts as outside)."""
    folder = Path(out) / name
    if not _PLAIN_NAME.fullmatch(name) or folder.resolve().parent != Path(out).resolve():
        raise GanInvertError(f"output name {name!r} would be written outside --out {out}")
    return folder


def run_id(identity: dict[str, Any]) -> str:
    """A short hash of everything that determines one image's output (image bytes, method,
    settings, seed, generator …): equal ids mean the folder would be rewritten identically."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- locks
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class OutputLocks:
    """The names of one ``--out`` that this process writes, each held with ``flock``.

    Use as a context manager; leaving it releases every lock and removes the lock files (and
    ``.locks`` when empty). A lock file is only ever deleted by the process holding it.
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self._held: dict[str, int] = {}

    def __enter__(self) -> "OutputLocks":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def holds(self, name: str) -> bool:
        return name in self._held

    def _path(self, name: str) -> Path:
        return self.out / LOCKS / f"{name}.lock"

    def acquire(self, names: Sequence[str]) -> None:
        """Lock every name, or none: GanInvertError naming the first one another run holds."""
        for name in names:
            if not self._try(name):
                self.release()
                raise GanInvertError(f"output folder {self.out / name} is in use by another run{self._owner(name)}; "
                                     "wait for it to finish or choose another --out")

    def _try(self, name: str) -> bool:
        if name in self._held:
            return True
        path = self._path(name)
        while True:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a finishing run removed .locks between the mkdir and the open
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            # The holder we waited for unlinks its file before unlocking: make sure ours is still the one at `path`.
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is None or (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._held[name] = fd
            return True

    def _owner(self, name: str) -> str:
        try:
            pid = self._path(name).read_text().strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def release(self) -> None:
        for name, fd in self._held.items():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(name))
            os.close(fd)
        self._held.clear()
        with contextlib.suppress(OSError):
            (self.out / LOCKS).rmdir()


# ----------------------------------------------------------------------------- folders
def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def staged_folder(folder: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``folder``; when the block ends without error,
    rename it to ``folder`` (which must not exist unless ``overwrite``), else delete it.

    Only whoever holds ``folder``'s lock (:class:`OutputLocks`) should publish it.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = folder.parent / f"{TEMP_PREFIX}{folder.name}-{os.getpid()}"
    if os.path.lexists(temp):  # left by a killed process that had our pid
        _remove(temp)
    temp.mkdir()
    try:
        yield temp
        if not os.path.lexists(folder):
            os.rename(temp, folder)
        elif not overwrite:
            raise GanInvertError(f"{folder} already exists; pass --overwrite to replace it")
        else:
            old = folder.parent / f"{OLD_PREFIX}{folder.name}-{os.getpid()}"
            if os.path.lexists(old):
                _remove(old)
            os.rename(folder, old)
            os.rename(temp, folder)
            _remove(old)
    finally:
        if os.path.lexists(temp):
            _remove(temp)


MISSING, SAME_RUN, OTHER = "missing", "same run", "other"


def folder_state(folder: Path, run: str, record: str = "metrics.json") -> str:
    """MISSING (nothing there), SAME_RUN (a finished folder whose ``record`` holds ``run``) or OTHER."""
    if not os.path.lexists(folder):
        return MISSING
    try:
        data = json.loads((folder / record).read_text())
    except (OSError, ValueError):
        return OTHER
    if not isinstance(data, dict) or data.get("run_id") != run:
        return OTHER
    return SAME_RUN if all((folder / f).is_file() for f in RESULT_FILES) else OTHER


class Claim(NamedTuple):
    """What to do with one name's folder: skip it (``done``), and whether writing it replaces one."""

    done: bool
    replace: bool


def claim_folders(out: Path, names: Sequence[str], runs: Sequence[str], *, resume: bool, overwrite: bool,
                  record: str = "metrics.json") -> list[Claim]:
    """Decide, for each name (locked by the caller), what to do with its folder.

    A finished folder of the same run is done with ``resume`` and rewritten without it; a folder
    of anything else is refused (one GanInvertError before any work) unless ``overwrite``.
    """
    claims = []
    for name, run in zip(names, runs):
        folder = output_folder(out, name)
        state = folder_state(folder, run, record)
        if state == OTHER and not overwrite:
            raise GanInvertError(f"{folder} holds the output of another run (a different image, method, settings, "
                                 "seed or generator); pass --overwrite to replace it or choose another --out")
        claims.append(Claim(done=state == SAME_RUN and resume, replace=state != MISSING))
    return claims


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_key(names: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(names).encode()).hexdigest()[:16]


class Checkpoints:
    """The checkpoints of unfinished batches in ``OUT/.checkpoints`` and their records."""

    def __init__(self, out: Path) -> None:
        self.dir = Path(out) / CHECKPOINTS

    def path(self, names: Sequence[str]) -> Path:
        return self.dir / f"{checkpoint_key(names)}.pt"

    def begin(self, names: Sequence[str], batch_size: int) -> Path:
        """Record which images the batch's checkpoint will hold; returns the checkpoint's path."""
        atomic_write_json(self.dir / f"{checkpoint_key(names)}.json",
                          {"names": list(names), "batch_size": batch_size, "pid": os.getpid()})
        return self.path(names)

    def end(self, names: Sequence[str]) -> None:
        """Forget a finished batch (the engine has removed its checkpoint)."""
        for path in (self.path(names), self.dir / f"{checkpoint_key(names)}.json"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    def records(self) -> dict[str, dict[str, Any]]:
        """Every readable record, by key."""
        found = {}
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else ():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            names = data.get("names") if isinstance(data, dict) else None
            if isinstance(names, list) and all(isinstance(n, str) for n in names):
                found[path.stem] = data
        return found

    def reconcile(self, batches: Sequence[Sequence[str]], locks: OutputLocks, resume: bool) -> None:
        """Deal with checkpoints of our images made with another batching (another --batch-size or
        image list): with ``resume``, refuse naming the batch size to use (its work would be lost);
        without, delete those whose images are all ours (they are being recomputed)."""
        planned = {checkpoint_key(b) for b in batches}
        for key, record in self.records().items():
            names = record["names"]
            if key in planned or not any(locks.holds(n) for n in names):
                continue
            ours = all(locks.holds(n) for n in names)
            if not (self.dir / f"{key}.pt").exists():
                if ours:  # the record of a batch killed before its first checkpoint
                    self.end(names)
                continue
            if resume:
                raise GanInvertError(
                    f"{self.dir / key}.pt holds the unfinished inversion of {', '.join(names)} made with "
                    f"--batch-size {record.get('batch_size')}; resume with the same images and --batch-size "
                    f"{record.get('batch_size')}, or drop --resume to start them again")
            if ours:
                self.end(names)


# ----------------------------------------------------------------------------- leftovers
def _stale(names: Sequence[str], pid: Any, locks: OutputLocks) -> bool:
    """Whether the leftover of a process ``pid`` writing ``names`` can be deleted: its names are
    ours now (so it cannot still be writing them), or that process is gone. (Liveness is asked of
    this machine's process table: runs writing one --out from two containers or hosts should use
    distinct names.) Only a lock's holder deletes a lock file, so lock files are never swept."""
    if names and all(locks.holds(n) for n in names):
        return True
    return isinstance(pid, int) and pid > 0 and pid != os.getpid() and not _pid_alive(pid)


def sweep_stale(out: Path, locks: OutputLocks) -> None:
    """Delete what killed runs left in ``out``: ``.tmp-<name>-<pid>`` and ``.old-<name>-<pid>``
    folders and the engine's temporary checkpoint files (see :func:`_stale`)."""
    out = Path(out)
    for entry in out.iterdir() if out.is_dir() else ():
        prefix = next((p for p in (TEMP_PREFIX, OLD_PREFIX) if entry.name.startswith(p)), None)
        if prefix is None:
            continue
        name, _, pid = entry.name[len(prefix):].rpartition("-")
        if name and pid.isdigit() and _stale([name], int(pid), locks):
            with contextlib.suppress(FileNotFoundError):
                _remove(entry)
    checkpoints = Checkpoints(out)
    records = checkpoints.records()
    for temp in checkpoints.dir.glob(".*.tmp") if checkpoints.dir.is_dir() else ():
        key = temp.name[1:].split(".", 1)[0]  # .<key>.pt.<random>.tmp and .<key>.json.<random>.tmp
        record = records.get(key)
        if record is not None and _stale(record["names"], record.get("pid"), locks):
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
