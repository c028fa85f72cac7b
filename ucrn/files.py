"""Writing files safely: one atomic write for data files, run files and evaluation records.

A file is written to a temporary ``.NAME.<pid>.<random>.part`` beside its target, given the
usual mode (0666 less the umask) and renamed into place only when complete; on failure the
temporary is removed. Only a regular file is ever replaced, never a device, a directory or
a link's target. Temporaries of writers that died (SIGKILL) are removed by the next write to
the same target.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ucrn.errors import UcrnError

NAME_MAX = 255


def check_output_path(path: str | Path, what: str = "output", *, overwrite: bool = True) -> Path:
    """``path`` as a place a file can be written, or a ``UcrnError`` saying why not."""
    if not str(path).strip():
        raise UcrnError(f"{what}: the path is empty; give a file name")
    path = Path(path)
    if len(path.name.encode()) > NAME_MAX - 40:  # room for the temporary's prefix and suffix
        raise UcrnError(f"{what} {path}: the file name is too long")
    if path.is_dir():
        raise UcrnError(f"{what} {path} is a directory; give a file name inside it")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UcrnError(f"{what} {path} exists and is not a regular file; it is left alone")
    if path.exists() and not overwrite:
        raise UcrnError(f"{what} {path} exists; choose another path or pass --force")
    check_directory(path.parent, what)
    return path


def check_directory(folder: str | Path, what: str = "output", *, create: bool = True) -> Path:
    """``folder`` as a directory this process can write into (made when ``create``)."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UcrnError(f"{what}: {existing} is a file, so {folder} cannot be a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UcrnError(f"{what}: {existing} is not writable")
    if not create:
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UcrnError(f"{what}: cannot make {folder} ({error.strerror})") from None
    return folder


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed to ``path`` when the block ends
    without an error, removed otherwise."""
    path = check_output_path(path)
    remove_stale_temporaries(path)
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    try:
        yield temporary
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write ``path`` by calling ``write(temporary_path)``, then renaming it into place."""
    with atomic_output(path) as temporary:
        write(str(temporary))
    return Path(path)


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries of ``path`` left by writers that are no longer running."""
    for temporary in path.parent.glob(f".{path.name}.*.part"):
        pid = temporary.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and not _running(int(pid)):
            temporary.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LOCK_FILE = ".ucrn-lock"


@contextmanager
def hold_folder(folder: str | Path, what: str = "folder") -> Iterator[Path]:
    """``folder`` (made if missing) held by this process for the block: a second run that
    asks for it meanwhile gets a ``UcrnError`` naming the holder. The lock is the operating
    system's (``flock``), so it goes with the process, killed or not, and never blocks the
    next run; its file is removed when the block ends, and the folder too when the block
    made it and left it empty."""
    import fcntl

    made = not Path(folder).exists()
    folder = check_directory(folder, what)
    lock = folder / LOCK_FILE
    while True:
        handle = open(lock, "a+")  # noqa: SIM115 - held for the whole block
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UcrnError(f"{what} {folder} is in use by a run that is still going "
                            f"({holder}); wait for it to end, or give another folder") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file the last holder removed between our open and our lock
            break
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    try:
        yield folder
    finally:
        lock.unlink(missing_ok=True)
        handle.close()
        if made and not any(folder.iterdir()):  # a run that wrote nothing leaves nothing
            folder.rmdir()


def load_tensors(path: str | Path, what: str) -> object:
    """``torch.load`` of a file ucrn wrote (tensors, numbers, strings, lists, dicts), never
    running code; anything else is a ``UcrnError`` in one line naming ``what`` and why."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and torch errors alike
        text = " ".join(str(error).split())
        if "weights only load failed" in text.lower() and "global" in text.lower():
            reason = ("it holds Python objects beyond tensors and plain values, and loading "
                      "those could run code, so ucrn does not load it")
        elif "WeightsUnpickler error:" in text:  # not a pickle of data at all
            detail = text.split("WeightsUnpickler error:", 1)[1].split(" Check the")[0]
            reason = f"it is not a torch file of tensors: {detail.strip()[:120]}"
        else:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reason = f"{type(error).__name__}: {' '.join(first.split())[:200]}"
        raise UcrnError(f"{what} {path} is not a file written by ucrn ({reason})") from None
