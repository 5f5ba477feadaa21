"""Who this execution node is: a stable node id, and a boot id new at every start.

API processes record both for each session they place here; a different boot id later means
the node restarted and lost every session it held.
"""

import secrets
import socket


def new_boot_id() -> str:
    return "boot-" + secrets.token_hex(8)


def node_id(configured: str | None, port: int) -> str:
    """`configured` (CODEPROXY_NODE_ID), else this host's name and the port it serves on:
    the same across restarts, different for two executors on one host."""
    return configured or f"{socket.gethostname()}:{port}"
