"""Signed, expiring output_url links: the signature is the capability, so links work in <img> tags."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path

from gateway.parsing import ascii_int

_LOGGER = logging.getLogger(__name__)
SECRET_FILE = "url_signing_secret"


def load_or_create_secret(configured: str, data_dir: Path) -> bytes:
    """The configured secret, else one generated once into data_dir (so links survive restarts)."""
    if configured:
        return configured.encode()
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
        _LOGGER.info("generated a URL-signing secret in %s", path)
    return path.read_text().strip().encode()


class OutputLinks:
    """`{base}/v1/files/{image_id}.{ext}?expires=...&signature=...` with HMAC-SHA256 over name and expiry."""

    def __init__(self, secret: bytes, base_url: str, ttl_s: int) -> None:
        self._secret = secret
        self._base_url = base_url
        self._ttl_s = ttl_s

    def _signature(self, name: str, expires: int) -> str:
        return hmac.new(self._secret, f"{name}:{expires}".encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def url_for(self, image_id: str, extension: str, now: float | None = None) -> str:
        name = f"{image_id}.{extension}"
        expires = int(now if now is not None else time.time()) + self._ttl_s
        return f"{self._base_url}/v1/files/{name}?expires={expires}&signature={self._signature(name, expires)}"

    def verify(self, name: str, expires: str, signature: str, now: float | None = None) -> bool:
        """True for an unexpired link this gateway (or a replica sharing the secret) signed."""
        expires_at = ascii_int(expires)
        if expires_at is None or expires_at < (now if now is not None else time.time()):
            return False
        # compare_digest refuses non-ASCII str; compared as UTF-8 bytes, any text is simply a mismatch.
        return hmac.compare_digest(self._signature(name, expires_at).encode(), signature.encode("utf-8", "surrogatepass"))
