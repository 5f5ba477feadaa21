"""Host-side file access never follows what a sandbox planted in /mnt/data."""

import hashlib
import os
from pathlib import Path

import pytest

from executor.errors import InvalidRequest, SandboxFileNotFound
from executor.local import LocalSandbox
from tests.executor.conftest import chunks, read_all, run

PLANT = """
import os
os.symlink('/etc/passwd', '/mnt/data/passwd')
os.symlink({data_dir!r}, '/mnt/data/datadir')
os.symlink('/etc', '/mnt/data/etc')
os.symlink('/', '/mnt/data/root')
os.mkfifo('/mnt/data/fifo')
os.mkdir('/mnt/data/real')
open('/mnt/data/real/ok.txt', 'w').write('fine')
os.symlink('/etc/hostname', '/mnt/data/real/host')
"""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_symlinks_and_special_files_are_not_followed(
    sandbox: LocalSandbox, local_data_dir: Path
) -> None:
    passwd_before = digest(Path("/etc/passwd"))
    out = await run(sandbox, PLANT.format(data_dir=str(local_data_dir)))
    assert out.error is None, out.error
    for path in ("passwd", "etc/passwd", "root/etc/shadow", "datadir/cache", "fifo", "real/host"):
        with pytest.raises(SandboxFileNotFound):
            await sandbox.read_file(path)
    assert [f.path for f in await sandbox.list_files()] == ["/mnt/data/real/ok.txt"]
    assert await read_all(sandbox, "real/ok.txt") == b"fine"
    for path in ("etc/evil", "root/tmp/evil", "datadir/evil"):
        with pytest.raises(InvalidRequest):
            await sandbox.write_file(path, chunks(b"evil"), max_bytes=100)
    assert not any(map(os.path.lexists, ["/etc/evil", local_data_dir / "evil"]))
    # Writing over a planted link replaces the link, never its target.
    await sandbox.write_file("passwd", chunks(b"mine"), max_bytes=100)
    assert digest(Path("/etc/passwd")) == passwd_before
    assert await read_all(sandbox, "passwd") == b"mine"
    assert (await run(sandbox, "print(open('/mnt/data/passwd').read())")).stdout == "mine\n"


async def test_hard_links_to_host_files_are_impossible(sandbox: LocalSandbox) -> None:
    out = await run(
        sandbox,
        "import os\ntry:\n    os.link('/usr/bin/bash', '/mnt/data/bash')\n"
        "except OSError as e:\n    print(e.errno)",
    )
    assert out.stdout == "18\n"  # EXDEV: /mnt/data is its own filesystem
