"""Who this execution node is: a stable node id, and a boot id new at every start.

API processes record both for each session they place here; a different boot id later means
the node restarted and lost every session it held.
"""

import os
import secrets
import socket
from pathlib import Path

NODE_ID_FILE = "node_id"


def new_boot_id() -> str:
    return "boot-" + secrets.token_hex(8)


def node_id(configured: str | None, data_dir: Path) -> str:
    """`configured` (CODEPROXY_NODE_ID), else an id generated once and kept in the data dir."""
    if configured:
        return configured
    path = data_dir / NODE_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    generated = f"{socket.gethostname()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # another process won the race; use its id
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(generated)
    return generated
