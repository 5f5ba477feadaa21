"""Host-side access to a sandbox's /mnt/data that never follows a link the sandbox planted.

The sandbox owns that directory and can swap any component for a symlink at any moment, so
every path is walked one component at a time with openat(O_NOFOLLOW), starting from an fd of
the data root, and only regular files are read or listed. `DataDir` and `PendingFile` block;
the sandbox calls them in a worker thread.
"""

import asyncio
import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from executor.api import DATA_DIR
from executor.errors import FileTooLarge, InvalidRequest, SandboxFileNotFound
from executor.models import FileEntry
from executor.output import clean_name

CHUNK = 256 * 1024
# A sandbox can create millions of empty files and trees thousands of levels deep; listing
# stops at these.
MAX_LISTED = 10_000
MAX_VISITED = 100_000
MAX_DEPTH = 64

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _not_found(path: str) -> SandboxFileNotFound:
    return SandboxFileNotFound(f"No file {DATA_DIR}/{path} in the sandbox.", param="path")


class DataDir:
    """The host directory behind /mnt/data, with files owned by the sandbox's host uid."""

    def __init__(self, root: Path, uid: int) -> None:
        self.root = root
        self.uid = uid

    def _chown(self, fd: int) -> None:
        if self.uid != os.geteuid():
            os.fchown(fd, self.uid, self.uid)

    def _open_dir(self, parts: list[str], *, create: bool, made: list[tuple[int, str]]) -> int:
        """An fd of the directory `parts` below the root; `made` records dirs we created."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    made.append((os.dup(fd), part))
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    self._chown(child)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_read(self, path: str) -> int:
        """An fd of the regular file at `path` (relative), or SandboxFileNotFound."""
        *dirs, name = path.split("/")
        try:
            dfd = self._open_dir(dirs, create=False, made=[])
        except OSError as e:
            # ELOOP/ENOTDIR: a component is a symlink or a file; to a client it is not there.
            raise _not_found(path) from e
        try:
            # O_NONBLOCK: opening a FIFO the sandbox planted must not hang this thread.
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd
            )
        except OSError as e:
            raise _not_found(path) from e
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _not_found(path)
        os.set_blocking(fd, True)
        return fd

    def begin_write(self, path: str) -> "PendingFile":
        """Start writing `path`: a hidden temp file next to it, renamed into place on commit."""
        *dirs, name = path.split("/")
        made: list[tuple[int, str]] = []
        try:
            dfd = self._open_dir(dirs, create=True, made=made)
        except OSError as e:
            _undo_dirs(made)
            if e.errno in (errno.ENOTDIR, errno.ELOOP, errno.EEXIST):
                raise InvalidRequest(
                    f"Cannot create {DATA_DIR}/{path}: a parent is not a folder.", param="path"
                ) from e
            if e.errno == errno.ENAMETOOLONG:
                raise InvalidRequest(f"Path {path!r} is too long.", param="path") from e
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise FileTooLarge(f"No space left in {DATA_DIR}.", param="file") from e
            raise
        tmp = f".{name[:200]}.{secrets.token_hex(4)}.part"
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
                dir_fd=dfd,
            )
            self._chown(fd)
        except BaseException as e:
            os.close(dfd)
            _undo_dirs(made)
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise FileTooLarge(f"No space left in {DATA_DIR}.", param="file") from e
            raise
        return PendingFile(dfd, fd, tmp, name, path, made)

    def list(self) -> list[FileEntry]:
        """Regular files below the root (hidden ones too), without following links.

        Bounded however the sandbox shaped the tree: no recursion, at most MAX_DEPTH levels
        (one open fd each) and MAX_VISITED entries, and at most MAX_LISTED files. A name
        that is not valid UTF-8 is listed with U+FFFD in place of its bad bytes (it cannot
        be read back by that name).
        """
        entries: list[FileEntry] = []
        visited = 0
        root = os.open(self.root, _DIR_FLAGS)
        # One (fd, path prefix, entries) per open level.
        levels = [(root, "", os.scandir(root))]
        try:
            while levels and len(entries) < MAX_LISTED and visited < MAX_VISITED:
                fd, prefix, it = levels[-1]
                entry = next(it, None)
                if entry is None:
                    it.close()
                    os.close(fd)
                    levels.pop()
                    continue
                visited += 1
                name = prefix + clean_name(entry.name)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if len(levels) < MAX_DEPTH:
                            child = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                            levels.append((child, name + "/", os.scandir(child)))
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    entries.append(
                        FileEntry(path=f"{DATA_DIR}/{name}", size=st.st_size, modified=st.st_mtime)
                    )
        finally:
            for fd, _, it in levels:
                it.close()
                os.close(fd)
        return sorted(entries, key=lambda e: e.path)


def _undo_dirs(made: list[tuple[int, str]]) -> None:
    for parent_fd, name in reversed(made):
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=parent_fd)
        os.close(parent_fd)
    made.clear()


class PendingFile:
    """A file being uploaded; nothing of it remains unless `commit` succeeds."""

    def __init__(
        self, dfd: int, fd: int, tmp: str, name: str, path: str, made: list[tuple[int, str]]
    ) -> None:
        self._dfd, self._fd, self._tmp, self._name, self.path = dfd, fd, tmp, name, path
        self._made = made
        self.size = 0

    def write(self, chunk: bytes, max_bytes: int) -> None:
        """Append a chunk; FileTooLarge past `max_bytes` or when the volume is full."""
        self.size += len(chunk)
        if self.size > max_bytes:
            raise FileTooLarge(f"File is larger than the limit of {max_bytes} bytes.", param="file")
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise FileTooLarge(
                    f"No space left in {DATA_DIR} for this file.", param="file"
                ) from e
            raise

    def commit(self) -> FileEntry:
        """Rename the temp file into place (replacing a file or a planted symlink)."""
        st = os.fstat(self._fd)
        try:
            os.rename(self._tmp, self._name, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)
        except IsADirectoryError as e:
            self.abort()
            raise InvalidRequest(f"{DATA_DIR}/{self.path} is a folder.", param="path") from e
        except OSError as e:
            self.abort()
            if e.errno == errno.ENAMETOOLONG:
                raise InvalidRequest(f"Path {self.path!r} is too long.", param="path") from e
            raise
        except BaseException:
            self.abort()
            raise
        self._close()
        for parent_fd, _ in self._made:
            os.close(parent_fd)
        self._made.clear()
        return FileEntry(path=f"{DATA_DIR}/{self.path}", size=st.st_size, modified=st.st_mtime)

    def abort(self) -> None:
        """Remove the temp file and the folders this write created."""
        with contextlib.suppress(OSError):
            os.unlink(self._tmp, dir_fd=self._dfd)
        self._close()
        _undo_dirs(self._made)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            os.close(self._dfd)
            self._fd = self._dfd = -1


class FileStream:
    """Async chunks of an open file; the fd is closed at the end, on aclose() or on collection.

    A plain async generator would leak the fd when the caller never starts iterating it.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __aiter__(self) -> "FileStream":
        return self

    async def __anext__(self) -> bytes:
        if self._fd < 0:
            raise StopAsyncIteration
        chunk = await asyncio.to_thread(os.read, self._fd, CHUNK)
        if not chunk:
            self._close()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Stop early and close the file."""
        self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self._close()
