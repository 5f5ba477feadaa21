"""The `codeproxy` command's refusals: what it will not do, and why it says so."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def codeproxy(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codeproxy.cli", *args],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("CODEPROXY_")},
            "CODEPROXY_DATA_DIR": str(tmp_path / "data"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_serve_stays_one_process(tmp_path: Path) -> None:
    done = codeproxy(tmp_path, "serve", CODEPROXY_WORKERS="2")
    assert done.returncode != 0
    assert "codeproxy serve stays one process" in done.stderr
    assert "`codeproxy executor` and `codeproxy proxy`" in done.stderr


def test_proxy_needs_executors(tmp_path: Path) -> None:
    done = codeproxy(tmp_path, "proxy", CODEPROXY_WORKERS="2")
    assert done.returncode != 0
    assert "needs CODEPROXY_EXECUTOR_URL" in done.stderr
