"""One training process per run folder: an OS-level lock on ``RUN_DIR/.lock``.

Two ``dualattn train`` processes writing into the same folder would interleave
one ``metrics.csv`` and overwrite each other's checkpoints. :class:`RunDirLock`
takes an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` (released by the OS when
the process exits or crashes, even on SIGKILL) and writes the holder's pid,
host and start time into it so that the refused process can say who holds it.

Where ``fcntl`` is missing (Windows) the lock file is created with ``O_EXCL``
instead and removed on release; a file left by a crashed process is treated as
stale when its pid no longer runs on this host (or it is older than
``STALE_AFTER_S`` and its pid cannot be checked).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

from dualattn.data.base import make_writable_dir

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
STALE_AFTER_S = 7 * 24 * 3600.0


class RunDirLocked(RuntimeError):
    """Another live process holds the run folder's lock."""

    def __init__(self, run_dir: Path, holder: dict[str, str]) -> None:
        self.run_dir, self.holder = run_dir, holder
        pid = holder.get("pid", "unknown")
        host = holder.get("host")
        where = f" on {host}" if host and host != socket.gethostname() else ""
        since = f" since {holder['started']}" if holder.get("started") else ""
        super().__init__(
            f"run folder {run_dir} is in use by another training process (pid {pid}{where}{since}); "
            f"wait for it to finish, stop it, or choose another --run-dir "
            f"(lock file: {run_dir / LOCK_NAME})"
        )


class RunDirNotWritable(OSError):
    """The run folder cannot be created or written."""

    def __init__(self, run_dir: Path, exc: OSError) -> None:
        self.run_dir = run_dir
        reason = exc.strerror or type(exc).__name__
        super().__init__(
            f"run folder {run_dir} is not writable ({reason}); choose another --run-dir/--out "
            "or make it writable"
        )


def ensure_writable_dir(path: Path) -> Path | None:
    """Create ``path`` (with parents) and check a file can be written in it.

    Returns the outermost folder this call created (None when ``path`` existed),
    so that it can be removed again. Raises :class:`RunDirNotWritable` naming
    the folder otherwise.
    """
    path = Path(path)
    created = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        created = folder
    try:
        make_writable_dir(path)
    except OSError as exc:
        raise RunDirNotWritable(path, exc) from exc
    return created


def _read_holder(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, val = line.partition("=")
        if sep:
            out[key.strip()] = val.strip()
    return out


def _pid_alive(pid: int) -> bool | None:
    """True/False when it can be told, None when not (e.g. no permission to signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return True


class RunDirLock:
    """Exclusive lock on ``run_dir/.lock`` for the lifetime of one training process.

    Use as a context manager or with :meth:`acquire` / :meth:`release`. When the
    folder did not exist before and nothing but the lock was written into it,
    :meth:`release` removes it again (a run that failed its checks leaves no trace).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._created: Path | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _info(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        return f"pid={os.getpid()}\nhost={socket.gethostname()}\nstarted={started}\n"

    def acquire(self) -> "RunDirLock":
        if self.held:
            return self
        self._created = ensure_writable_dir(self.run_dir)
        try:
            if fcntl is not None:
                self._acquire_flock()
            else:  # pragma: no cover - exercised on Windows only (and by a test forcing it)
                self._acquire_excl()
        except OSError as exc:
            if isinstance(exc, RunDirNotWritable):
                raise
            raise RunDirNotWritable(self.run_dir, exc) from exc
        except RunDirLocked:
            self._cleanup_created()
            raise
        return self

    def _acquire_flock(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunDirLocked(self.run_dir, _read_holder(self.path)) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, self._info().encode())
        os.fsync(fd)
        self._fd = fd

    def _acquire_excl(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_holder(self.path)
                if not self._is_stale(holder):
                    raise RunDirLocked(self.run_dir, holder) from None
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            os.write(fd, self._info().encode())
            self._fd = fd
            return
        raise RunDirLocked(self.run_dir, _read_holder(self.path))

    def _is_stale(self, holder: dict[str, str]) -> bool:
        try:
            pid = int(holder.get("pid", ""))
        except ValueError:
            pid = None
        if pid is not None and holder.get("host", socket.gethostname()) == socket.gethostname():
            alive = _pid_alive(pid)
            if alive is not None:
                return not alive
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return True
        return age > STALE_AFTER_S

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if fcntl is not None:
                # keep the file: unlinking a flock'ed file races with a process that just opened it
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            if fcntl is None:  # pragma: no cover
                os.remove(self.path)
        except OSError:
            pass
        self._cleanup_created()

    def _cleanup_created(self) -> None:
        """Remove the folders this lock created when nothing else was written into them."""
        if self._created is None:
            return
        try:
            if {p.name for p in self.run_dir.iterdir()} <= {LOCK_NAME}:
                if self.path.exists():
                    os.remove(self.path)
                folder = self.run_dir
                while True:
                    folder.rmdir()  # OSError (stops) when not empty
                    if folder == self._created:
                        break
                    folder = folder.parent
        except OSError:
            pass

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
