"""Accounts and their API keys: creation, authentication by key hash (recording each key's last use), plan
changes, disabling, key rotation and revocation, and the webhook signing secret with its rotation window."""

import base64
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError

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
# A key's last use is written at most this often: an operator asks "is this key still used?", which a minute's
# precision answers, and authentication stays a read (the key cache already spares most requests that one).
LAST_USE_PRECISION = dt.timedelta(minutes=1)
# What every request with a disabled account's key is told (403 forbidden): the key is right, the account is off.
DISABLED_MESSAGE = "this account is disabled; contact the operator of this service"


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
    return await _account_by_key_hash(sessions, hash_api_key(api_key))


async def _account_by_key_hash(sessions: Sessions, key_hash: str) -> Account | None:
    async with sessions() as session:
        row = (
            await session.execute(
                select(ApiKey.key_hash, ApiKey.id, ApiKey.last_used_at, Account)
                .join(Account, Account.id == ApiKey.account_id)
                .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
            )
        ).one_or_none()
    if row is None:
        return None
    stored_hash, key_id, last_used_at, account = row
    # The index lookup already matched; comparing in constant time as well costs nothing and keeps the
    # check obviously free of timing leaks whatever the database does.
    if not hmac.compare_digest(stored_hash, key_hash):
        return None
    now = utc_now()
    if last_used_at is None or now - last_used_at >= LAST_USE_PRECISION:
        await _record_use(sessions, key_id, now)
    return account


async def _record_use(sessions: Sessions, key_id: int, now: dt.datetime) -> None:
    """Note that the key was used now, unless another request (or replica) did within LAST_USE_PRECISION. A
    failure costs the record, never the request: the lookup that authenticated it has succeeded."""
    try:
        async with sessions.begin() as session:
            await session.execute(
                update(ApiKey)
                .where(
                    ApiKey.id == key_id,
                    or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USE_PRECISION),
                )
                .values(last_used_at=now)
                .execution_options(synchronize_session=False)
            )
    except SQLAlchemyError as error:
        _LOGGER.warning("could not record the use of API key %s: %s", key_id, error)


class KeyCache:
    """API key hash -> account for `ttl_s` seconds, in this process: most requests then authenticate without a
    database round trip. The price is that a revoked key (or a changed plan) takes effect on this replica within
    `ttl_s`; 0 turns the cache off. Unknown keys are never cached (a wrong key costs one lookup, as before),
    and at most `max_entries` keys are held (the oldest go first), so random keys cannot grow it.
    """

    def __init__(
        self, sessions: Sessions, ttl_s: float, *, max_entries: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s < 0 or max_entries < 1:
            raise ValueError("ttl_s must not be negative and max_entries must be positive")
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._entries: dict[str, tuple[float, Account]] = {}

    async def authenticate(self, api_key: str) -> Account | None:
        """The account owning `api_key`, from the cache while its entry is fresh, else from the database."""
        if self._ttl_s == 0:
            return await authenticate(self._sessions, api_key)
        key_hash = hash_api_key(api_key)
        now = self._monotonic()
        entry = self._entries.get(key_hash)
        if entry is not None:
            if entry[0] > now:
                return entry[1]
            del self._entries[key_hash]
        account = await _account_by_key_hash(self._sessions, key_hash)
        if account is not None:
            if len(self._entries) >= self._max_entries:
                # Insertion order: the first entry is the oldest.
                del self._entries[next(iter(self._entries))]
            self._entries[key_hash] = (now + self._ttl_s, account)
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


async def issue_key(sessions: Sessions, account_id: str) -> str | None:
    """Give the account one more key, its others untouched (a rotation without a gap: issue, switch, revoke);
    the key in clear text, shown only now, or None if there is no such account."""
    async with sessions.begin() as session:
        if await session.get(Account, account_id) is None:
            return None
        api_key, plaintext = _new_api_key(account_id)
        session.add(api_key)
    _LOGGER.info("issued another API key to account %s", account_id)
    return plaintext


async def list_keys(sessions: Sessions, account_id: str) -> list[ApiKey] | None:
    """The account's keys, oldest first, revoked ones included; None if there is no such account."""
    async with sessions() as session:
        if await session.get(Account, account_id) is None:
            return None
        return list(
            (
                await session.scalars(
                    select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.created_at, ApiKey.id)
                )
            ).all()
        )


def matching_keys(keys: list[ApiKey], key: str) -> list[ApiKey]:
    """The keys `key` names: the number `keys list` shows, the whole key (matched by its hash: exactly that
    one), or the display prefix ("rmv_" and 4 characters, a trailing … allowed), which two keys may share."""
    if key.isascii() and key.isdigit():
        return [record for record in keys if record.id == int(key)]
    if key.startswith(API_KEY_PREFIX) and len(key) > _DISPLAY_PREFIX_LENGTH + 1:
        key_hash = hash_api_key(key)
        return [record for record in keys if hmac.compare_digest(record.key_hash, key_hash)]
    prefix = key.removesuffix("…")
    return [record for record in keys if record.prefix == prefix] if prefix else []


@dataclass(frozen=True)
class Revocation:
    """What `revoke_key` did: the key it revoked (or found revoked already) and how many stay active."""

    key: ApiKey
    already_revoked: bool
    active_left: int


class KeyNotFound(LookupError):
    """The account has no key the given reference names."""


class AmbiguousKey(LookupError):
    """The given display prefix names more than one key of the account: use the number `keys list` shows."""


async def revoke_key(sessions: Sessions, account_id: str, key: str) -> Revocation | None:
    """Revoke the one key of the account that `key` names (see matching_keys) without issuing another; None if
    there is no such account, KeyNotFound or AmbiguousKey if `key` names no key or several."""
    async with sessions.begin() as session:
        if await session.get(Account, account_id) is None:
            return None
        keys = list((await session.scalars(select(ApiKey).where(ApiKey.account_id == account_id))).all())
        matches = matching_keys(keys, key)
        if not matches:
            raise KeyNotFound(key)
        if len(matches) > 1:
            raise AmbiguousKey(key)
        record = matches[0]
        already_revoked = record.revoked_at is not None
        if not already_revoked:
            record.revoked_at = utc_now()
        active_left = sum(other.revoked_at is None for other in keys)
    if not already_revoked:
        _LOGGER.info("revoked API key %s (%s) of account %s", record.id, record.prefix, account_id)
    return Revocation(record, already_revoked, active_left)


async def change_plan(sessions: Sessions, account_id: str, plan: PlanName) -> Account | None:
    """Move the account to `plan` (its limits apply from the next request each replica authenticates afresh;
    this month's usage is kept); the updated account, or None if there is no such account."""
    account = await _update_account(sessions, account_id, plan=plan)
    if account is not None:
        _LOGGER.info("account %s is now on plan %s", account_id, plan)
    return account


async def set_disabled(sessions: Sessions, account_id: str, disabled: bool) -> Account | None:
    """Disable the account (every request with its keys is refused, its data kept) or enable it again; the
    updated account, or None if there is no such account. Disabling a disabled account keeps its first date."""
    async with sessions.begin() as session:
        account = await session.get(Account, account_id)
        if account is None:
            return None
        if disabled and account.disabled_at is None:
            account.disabled_at = utc_now()
        elif not disabled:
            account.disabled_at = None
    _LOGGER.info("account %s is %s", account_id, "disabled" if disabled else "enabled")
    return account


async def _update_account(sessions: Sessions, account_id: str, **values: object) -> Account | None:
    async with sessions.begin() as session:
        updated = await session.scalars(
            update(Account).where(Account.id == account_id).values(**values).returning(Account)
            .execution_options(synchronize_session=False)
        )
        return updated.one_or_none()


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
