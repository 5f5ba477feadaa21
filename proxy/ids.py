"""OpenAI-style identifiers."""

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """`prefix` followed by random letters and digits, e.g. `file-3kQ…`."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))
