"""The file system, treated as untrusted: special files, OS errors, output targets and the run lock.

Reading: `open_regular` / `read_regular` open only regular files (a FIFO, device or socket is refused
without blocking on it; a symbolic-link loop or a dangling link is named as such) and can bound the size.
Writing: `check_output_file` and `make_output_folder` are called before long work starts, so a bad
output path fails in seconds, not after an hour; `os_reason` turns any OSError into a short phrase.
`RunLock` makes one process the only writer of a run folder; the kernel drops the lock when that
process dies, however it dies.
"""

from __future__ import annotations

import codecs
import errno
import fcntl
import json
import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import DataError, OutputError, TrainingError

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (the file-size limit was reached)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "is a folder",
    errno.ENOENT: "no such file or folder",
    errno.ENODEV: "no such device",
    errno.ENXIO: "no such device or address",
    errno.ELOOP: "symbolic link loop",
    errno.EIO: "input/output error",
    errno.ENAMETOOLONG: "file name too long",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "folder not empty",
    errno.EXDEV: "on another file system",
}


def os_reason(exc: OSError) -> str:
    """A short phrase for an OS error (`no space left on device`), without the path."""
    return _REASONS.get(exc.errno) or (exc.strerror or str(exc) or type(exc).__name__).lower()


def os_error_line(exc: OSError) -> str:
    """One line for an OS error: the path it is about, if known, and the reason."""
    where = exc.filename if exc.filename is not None else None
    if where is not None and exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    return f"{where}: {os_reason(exc)}" if where is not None else os_reason(exc)


def special_kind(mode: int) -> str | None:
    """What a non-regular file is ("a FIFO (named pipe)", ...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


class Unreadable(Exception):
    """Why a path cannot be read as a regular file. `kind`: missing, folder, special, link, too-large or os."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _link_problem(path: str | Path) -> Unreadable | None:
    """A dangling link or a link loop at `path`, if that is what it is."""
    try:
        os.stat(path)
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Unreadable("link", "symbolic link loop")
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return Unreadable("link", f"dangling symbolic link (its target {os.readlink(path)} does not exist)")
        return None


def open_regular(path: str | Path, max_bytes: int | None = None) -> BinaryIO:
    """Open a regular file for reading, never blocking: anything else raises `Unreadable`.

    A FIFO is opened non-blocking (so a FIFO without a writer cannot hang us) and then refused, like
    devices and sockets; nothing is read from them.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        problem = _link_problem(path)
        if problem:
            raise problem from None
        if exc.errno == errno.ENOENT:
            raise Unreadable("missing", "no such file") from None
        raise Unreadable("os", f"cannot open ({os_reason(exc)})") from None
    kind = special_kind(info.st_mode)
    if kind == "a folder":
        raise Unreadable("folder", "is a folder, not a file")
    if kind:
        raise Unreadable("special", f"is {kind}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise Unreadable("os", f"cannot open ({os_reason(exc)})") from None
    handle = os.fdopen(fd, "rb")
    try:
        info = os.fstat(fd)  # the file opened, should it have been replaced since the stat above
        kind = special_kind(info.st_mode)
        if kind:
            raise Unreadable("folder" if kind == "a folder" else "special", f"is {kind}, not a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise Unreadable("too-large", f"file is {info.st_size:,} bytes, over the limit of {max_bytes:,}")
        os.set_blocking(fd, True)
    except BaseException:
        handle.close()
        raise
    return handle


def read_regular(path: str | Path, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file (see `open_regular`); `Unreadable` says why not."""
    with open_regular(path, max_bytes) as handle:
        try:
            return handle.read()
        except OSError as exc:
            raise Unreadable("os", f"cannot read ({os_reason(exc)})") from None


def read_text_file(path: str | Path, max_bytes: int, what: str) -> bytes:
    """The bytes of a text file as UTF-8: a UTF-8 byte-order mark is dropped, a UTF-16 file (with its byte-order
    mark) is converted. DataError names the file, as `what` ("the gt file"), when it cannot be read."""
    try:
        raw = read_regular(path, max_bytes)
    except Unreadable as exc:
        raise DataError(f"{path}: cannot read {what} ({exc.reason})") from None
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8):]
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: starts with a UTF-16 byte-order mark but is not valid UTF-16 ({exc.reason})") from None
    return raw


# --- outputs -------------------------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def _why_not_writable(folder: Path) -> str | None:
    """None when files can be created in `folder`, else why not."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "permission denied"


def check_output_parent(path: str | Path) -> None:
    """Check, before any work, that `path` can be created: its nearest existing ancestor is a writable folder."""
    path = Path(path)
    ancestor = _nearest_existing(path.parent if path.parent != path else path)
    if ancestor.is_symlink() and not ancestor.exists():
        problem = _link_problem(ancestor)
        raise OutputError(f"{path}: cannot create it, {ancestor} is a {problem.reason if problem else 'broken link'}")
    if not ancestor.is_dir():
        raise OutputError(f"{path}: cannot create it, {ancestor} is not a folder")
    reason = _why_not_writable(ancestor)
    if reason:
        raise OutputError(f"{path}: cannot write in {ancestor} ({reason})")


def check_output_file(
    path: str | Path, overwrite: bool = False, ours: Callable[[Path], bool] | None = None
) -> None:
    """Check, before any work, that the file `path` may be written.

    An existing file is replaced only with `overwrite`, or when `ours(path)` recognises it as an output
    of the same command; a folder, FIFO, device or socket is never written to.
    """
    path = Path(path)
    if os.path.lexists(path):
        problem = _link_problem(path)
        if problem:
            raise OutputError(f"{path}: {problem.reason}; remove it or give another name")
        kind = special_kind(path.stat().st_mode)
        if kind:
            raise OutputError(f"{path}: is {kind}; give the name of a file to write")
        if not overwrite and not (ours and ours(path)):
            raise OutputError(f"{path}: file exists; give another name, or --overwrite to replace it")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: cannot replace it ({_why_not_writable(path.parent)})")
        return
    check_output_parent(path)


def make_output_folder(path: str | Path) -> bool:
    """Create the folder `path` (and its parents) if needed; True when it did not exist. OutputError if impossible."""
    path = Path(path)
    if os.path.lexists(path):
        problem = _link_problem(path)
        if problem:
            raise OutputError(f"{path}: {problem.reason}")
        if not path.is_dir():
            raise OutputError(f"{path}: exists and is not a folder")
        reason = _why_not_writable(path)
        if reason:
            raise OutputError(f"{path}: cannot write in this folder ({reason})")
        return False
    check_output_parent(path)
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        return False  # made by someone else in the meantime; whoever writes must still take the lock
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the folder ({os_reason(exc)})") from None
    return True


# --- the run lock --------------------------------------------------------------------------------------


class RunLock:
    """An exclusive `flock` on `FOLDER/train.lock`, held while a run writes to the folder.

    The kernel releases it when the holder exits or is killed (a stale lock file locks nothing). The
    file is removed on release; a process that locked a file removed meanwhile tries again, so two
    processes can never both hold the lock of one folder.
    """

    NAME = "train.lock"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot create the run lock ({os_reason(exc)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise TrainingError(
                    f"{self.folder}: another `textrec train`{holder} is writing to this run folder; "
                    "wait for it to end, or give another --output"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise OutputError(f"{self.path}: cannot lock the run folder ({os_reason(exc)})") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file as we opened it: lock the new one
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is only for messages
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            pid = int(os.pread(fd, 32, 0).decode("ascii").strip())
        except (OSError, ValueError, UnicodeDecodeError):
            return ""
        return f" (process {pid})"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it, so that no one locks the file being removed
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holds_json_records(path: str | Path, keys: set[str]) -> bool:
    """Whether `path` holds a JSON list of objects that each have `keys`: how a command recognises its own
    output file, which it may replace."""
    try:
        data = json.loads(read_regular(path, 64 << 20))
    except (Unreadable, ValueError):
        return False
    return isinstance(data, list) and all(isinstance(r, dict) and keys <= r.keys() for r in data)
