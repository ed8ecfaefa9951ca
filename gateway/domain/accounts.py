"""Accounts and their API keys: creation, authentication by key hash, key rotation, and the webhook signing
secret with its rotation window."""

import base64
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import string

from sqlalchemy import select, update

from gateway.store.database import Sessions
from gateway.store.tables import Account as Account  # noqa: PLC0414 (re-exported for the HTTP handlers)
from gateway.store.tables import ApiKey, PlanName
from gateway.store.tables import utc_now as utc_now  # noqa: PLC0414 (re-exported for the HTTP handlers)

_LOGGER = logging.getLogger(__name__)

API_KEY_PREFIX = "rmv_"
# 32 random bytes: 43 url-safe characters, 256 bits of entropy.
_API_KEY_BYTES = 32
# "rmv_" and four characters of the secret part: enough to tell keys apart, far too little to guess one.
_DISPLAY_PREFIX_LENGTH = len(API_KEY_PREFIX) + 4
_ID_ALPHABET = string.ascii_lowercase + string.digits
# Standard Webhooks' secret format: "whsec_" and the base64 of the HMAC key (here 32 random bytes), which the
# `standardwebhooks` libraries take as it is.
WEBHOOK_SECRET_PREFIX = "whsec_"
_WEBHOOK_SECRET_BYTES = 32


def new_public_id(kind: str, length: int = 16) -> str:
    """Return an unguessable public id such as `acct_k3x...`: the kind, an underscore, lowercase alphanumerics."""
    return kind + "_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def hash_api_key(api_key: str) -> str:
    """Return the SHA-256 hex digest under which an API key is stored.

    A fast hash is right here: keys are 256-bit random tokens, not passwords, so there is no dictionary to
    slow down and every request can afford the lookup.
    """
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_webhook_secret() -> str:
    """Return a fresh webhook signing secret, "whsec_" + base64 of 32 random bytes (50 characters)."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_WEBHOOK_SECRET_BYTES)).decode()


def signing_secrets(account: Account, now: dt.datetime | None = None) -> list[str]:
    """The secrets that sign the account's webhooks now: the current one first, then the previous one while
    its rotation window is open."""
    current = now or utc_now()
    active = [account.webhook_secret]
    expires_at = account.previous_webhook_secret_expires_at
    if account.previous_webhook_secret and expires_at is not None and expires_at > current:
        active.append(account.previous_webhook_secret)
    return active


def _new_api_key(account_id: str) -> tuple[ApiKey, str]:
    plaintext = API_KEY_PREFIX + secrets.token_urlsafe(_API_KEY_BYTES)
    record = ApiKey(
        account_id=account_id, key_hash=hash_api_key(plaintext), prefix=plaintext[:_DISPLAY_PREFIX_LENGTH]
    )
    return record, plaintext


async def create_account(
    sessions: Sessions, *, name: str, plan: PlanName, email: str | None = None
) -> tuple[Account, str]:
    """Create an account with one API key; return the account and the key in clear text, shown only now."""
    account = Account(
        id=new_public_id("acct"), name=name, email=email, plan=plan, webhook_secret=new_webhook_secret()
    )
    api_key, plaintext = _new_api_key(account.id)
    async with sessions.begin() as session:
        session.add(account)
        await session.flush()  # the key's foreign key needs the account row first
        session.add(api_key)
    _LOGGER.info("created account %s on plan %s", account.id, plan)
    return account, plaintext


async def authenticate(sessions: Sessions, api_key: str) -> Account | None:
    """Return the account owning `api_key`, or None when the key is unknown or revoked."""
    key_hash = hash_api_key(api_key)
    async with sessions() as session:
        row = (
            await session.execute(
                select(ApiKey.key_hash, Account)
                .join(Account, Account.id == ApiKey.account_id)
                .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
            )
        ).one_or_none()
    if row is None:
        return None
    stored_hash, account = row
    # The index lookup already matched; comparing in constant time as well costs nothing and keeps the
    # check obviously free of timing leaks whatever the database does.
    if not hmac.compare_digest(stored_hash, key_hash):
        return None
    return account


async def rotate_key(sessions: Sessions, account_id: str) -> str | None:
    """Revoke every key of the account and issue a new one, in one transaction; None if no such account."""
    async with sessions.begin() as session:
        if await session.get(Account, account_id) is None:
            return None
        await session.execute(
            update(ApiKey)
            .where(ApiKey.account_id == account_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utc_now())
        )
        api_key, plaintext = _new_api_key(account_id)
        session.add(api_key)
    _LOGGER.info("rotated the API key of account %s", account_id)
    return plaintext


async def rotate_webhook_secret(sessions: Sessions, account_id: str, overlap: dt.timedelta) -> Account | None:
    """Give the account a new webhook secret; the one it replaces keeps signing, beside the new one, for
    `overlap` (zero: not at all). Returns the updated account, or None if there is no such account.

    One UPDATE that copies the current secret into `previous_webhook_secret`, so two rotations racing each
    other still leave a consistent pair (the loser's new secret becomes the previous one).
    """
    if overlap < dt.timedelta(0):
        raise ValueError("overlap must not be negative")
    now = utc_now()
    async with sessions.begin() as session:
        updated = await session.scalars(
            update(Account)
            .where(Account.id == account_id)
            .values(
                previous_webhook_secret=Account.webhook_secret,
                previous_webhook_secret_expires_at=now + overlap,
                webhook_secret=new_webhook_secret(),
                webhook_secret_rotated_at=now,
            )
            .returning(Account)
            .execution_options(synchronize_session=False)
        )
        account = updated.one_or_none()
    if account is None:
        return None
    _LOGGER.info(
        "rotated the webhook secret of account %s; the previous one signs until %s",
        account_id, (now + overlap).isoformat(timespec="seconds"),
    )
    return account


async def get_account(sessions: Sessions, account_id: str) -> Account | None:
    """Return the account with this id, or None."""
    async with sessions() as session:
        return await session.get(Account, account_id)


async def list_accounts(sessions: Sessions) -> list[Account]:
    """Return every account, oldest first."""
    async with sessions() as session:
        return list((await session.scalars(select(Account).order_by(Account.created_at, Account.id))).all())
