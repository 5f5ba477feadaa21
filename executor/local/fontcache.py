"""A matplotlib font cache built once, so a sandbox's first pyplot import skips the font scan.

MPLCONFIGDIR is on each sandbox's tmpfs, so without this every sandbox rebuilds the font list
(about 250 ms on its first `import matplotlib.pyplot`). `make` prebuilds it into the venv
(`share/codeproxy/matplotlib/`, with HOME unset so it lists only fonts under /usr, which
sandboxes see too). Failing that, it is built once inside a sandbox and kept under the data dir
per matplotlib version. Either way it is copied into each new sandbox's /tmp/.mpl.
"""

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from executor.local.runners import ProcessResult

log = logging.getLogger(__name__)

MPLCONFIGDIR = "/tmp/.mpl"
_NAME = re.compile(r"^fontlist-v[\w.]+\.json$")
_SCRIPT = """\
import os, matplotlib, matplotlib.font_manager as fm
name = f"fontlist-v{fm.FontManager.__version__}.json"
print(name)
with open(os.path.join(matplotlib.get_cachedir(), name)) as f:
    print(f.read(), end="")
"""

RunBare = Callable[[Sequence[str]], Awaitable[ProcessResult]]


VENV_CACHE = "share/codeproxy/matplotlib"


async def font_cache(
    venv: Path, cache_dir: Path, version: str, run: RunBare
) -> tuple[bytes, str] | None:
    """(content, destination in the sandbox) of the font cache, building it if needed."""
    folder = cache_dir / f"matplotlib-{version}"
    for cached in [*(venv / VENV_CACHE).glob("fontlist-v*.json"), *folder.glob("fontlist-v*.json")]:
        return cached.read_bytes(), f"{MPLCONFIGDIR}/{cached.name}"
    result = await run(["python3", "-P", "-c", _SCRIPT])
    name, _, content = result.stdout.text().partition("\n")
    if result.returncode != 0 or not _NAME.match(name) or result.stdout.truncated:
        log.warning(
            "could not prebuild the matplotlib font cache (exit %s): %s",
            result.returncode,
            result.stderr.text()[-500:],
        )
        return None
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_text(content)
    tmp.replace(folder / name)
    log.info("built the matplotlib font cache %s", folder / name)
    return content.encode(), f"{MPLCONFIGDIR}/{name}"
