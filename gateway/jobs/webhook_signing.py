"""Webhook signatures: HMAC-SHA256 in the Standard Webhooks headers and the older X-RemovAI-* ones, both carrying
one signature per active secret during a rotation; and the check a receiver runs."""

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence

from gateway.domain.accounts import WEBHOOK_SECRET_PREFIX
from gateway.parsing import ascii_int

TIMESTAMP_HEADER = "X-RemovAI-Timestamp"
SIGNATURE_HEADER = "X-RemovAI-Signature"
DELIVERY_HEADER = "X-RemovAI-Delivery"
SIGNATURE_VERSION = "v1"
# Standard Webhooks (standardwebhooks.com): the message id, timestamp and space-separated "v1,<base64>"
# signatures over f"{id}.{timestamp}.{body}", keyed with the base64-decoded secret.
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
DEFAULT_TOLERANCE_S = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of f"{timestamp}." + body under `secret`; binding the timestamp defeats replays."""
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def standard_key(secret: str) -> bytes | None:
    """The HMAC key Standard Webhooks derives from `secret`: base64 after the "whsec_" prefix, decoded as the
    `standardwebhooks` library decodes it; None when it is not base64 (such a secret signs only X-RemovAI-*)."""
    try:
        key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX) + "==")
    except (binascii.Error, ValueError):
        return None
    return key or None


def sign_standard(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str | None:
    """One Standard Webhooks signature, "v1,<base64 HMAC-SHA256 of id.timestamp.body>"; None if the secret has
    no Standard Webhooks key."""
    key = standard_key(secret)
    if key is None:
        return None
    message = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def _as_list(secrets: str | Sequence[str]) -> list[str]:
    active = [secrets] if isinstance(secrets, str) else list(secrets)
    if not active:
        raise ValueError("at least one secret must sign")
    return active


def signature_headers(secrets: str | Sequence[str], body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The X-RemovAI-Timestamp and X-RemovAI-Signature headers for `body`, signed now unless told otherwise;
    with several secrets (a rotation window) the signature header carries one "v1=<hex>" each, comma-separated."""
    signed_at = int(time.time()) if timestamp is None else timestamp
    signatures = ",".join(f"{SIGNATURE_VERSION}={sign(secret, signed_at, body)}" for secret in _as_list(secrets))
    return {TIMESTAMP_HEADER: str(signed_at), SIGNATURE_HEADER: signatures}


def delivery_headers(
    secrets: str | Sequence[str], delivery_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """Every signing header of one attempt: Standard Webhooks' webhook-id, webhook-timestamp and
    webhook-signature ("v1,<base64>" per secret, space-separated), and the X-RemovAI-* ones, which existing
    receivers verify; each signature header carries one signature per secret in `secrets`, current first."""
    active = _as_list(secrets)
    signed_at = int(time.time()) if timestamp is None else timestamp
    standard = [sign_standard(secret, delivery_id, signed_at, body) for secret in active]
    headers = {
        STANDARD_ID_HEADER: delivery_id,
        STANDARD_TIMESTAMP_HEADER: str(signed_at),
        DELIVERY_HEADER: delivery_id,
        **signature_headers(active, body, signed_at),
    }
    signatures = [signature for signature in standard if signature is not None]
    if signatures:
        headers[STANDARD_SIGNATURE_HEADER] = " ".join(signatures)
    return headers


def verify(
    secret: str,
    timestamp: int | str,
    body: bytes,
    signature: str,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver runs: True if `signature` (the header, "v1=<hex>"; several may be comma-separated)
    signs `body` at `timestamp` under `secret` and the timestamp is within `tolerance_s` of `now`."""
    signed_at = timestamp if isinstance(timestamp, int) else ascii_int(timestamp)
    if signed_at is None:
        return False
    current = time.time() if now is None else now
    if abs(current - signed_at) > tolerance_s:
        return False
    expected = sign(secret, signed_at, body)
    matched = False
    for candidate in signature.split(","):
        version, _, digest = candidate.strip().partition("=")
        # Compare every candidate, in constant time, so timing reveals neither position nor prefix.
        if version == SIGNATURE_VERSION and hmac.compare_digest(digest.encode(), expected.encode()):
            matched = True
    return matched
