"""Signed, expiring, tenant-bound download links for files, usable without an API key.

A link names the file and an expiry; its signature is an HMAC over the file id, the owning
tenant and the expiry, so it cannot be moved to another file or tenant or extended. Deleting
the file kills every link to it.
"""

import base64
import hashlib
import hmac
import time
from urllib.parse import quote

from storage.models import File


def signature(key: str, *, file_id: str, tenant: str, expires: int) -> str:
    mac = hmac.new(key.encode(), f"file\n{file_id}\n{tenant}\n{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def download_url(
    base_url: str, key: str, *, file_id: str, tenant: str, filename: str, ttl: int
) -> str:
    expires = int(time.time()) + ttl
    sig = signature(key, file_id=file_id, tenant=tenant, expires=expires)
    return (
        f"{base_url.rstrip('/')}/v1/files/{file_id}/download/{quote(filename)}"
        f"?expires={expires}&signature={sig}"
    )


def check(key: str, row: File, *, expires: int, sig: str) -> bool:
    """True if `sig` is this file's signature for `expires` (expiry checked separately)."""
    expected = signature(key, file_id=row.id, tenant=row.tenant, expires=expires)
    return hmac.compare_digest(expected, sig)
