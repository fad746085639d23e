"""HMAC-SHA256 request signatures for privileged commands (shared by the daemon and `smartbinctl`).

A signed request carries `"auth": {"key": "<key id>", "ts": <unix seconds>, "nonce": "<hex>", "sig": "<hex>"}`
beside `transaction` and `args`. The signature covers the device id, the command, the canonical JSON of the
args, the timestamp, the nonce and the key id, one per line, so a signature cannot be replayed for another
bin, another command, other arguments or another key; the timestamp window and the nonce memory stop
replays of the same request. A bin may hold several named keys (a technician's, a dashboard's, the
fleet's), each revocable on its own. Without `key` (the first format: five lines, no key id) a request is
accepted only while the bin has exactly one active key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..clock import CLOCK_SANE_AFTER

NONCE_RE = re.compile(r"^[0-9a-f]{16,64}$")
KEY_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
LEGACY_KEY = "default"
"""The id of `security.hmac_secret(_file)`, the single key of the first format."""
SIG_RE = re.compile(r"^[0-9a-f]{64}$")


class AuthError(Exception):
    """A privileged request whose signature is missing, malformed, stale, replayed or wrong."""


def canonical_args(args: dict[str, Any] | None) -> str:
    """The args as signed: compact JSON with sorted keys (an absent args object signs as `{}`)."""
    return json.dumps(args or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def signing_string(device_id: str, command: str, args: dict[str, Any] | None, ts: float, nonce: str,
                   key: str | None = None) -> bytes:
    """What the HMAC covers: device id, command, canonical args, timestamp, nonce (and the key id), one per line."""
    lines = [device_id, command, canonical_args(args), repr(float(ts)), nonce]
    if key is not None:
        lines.append(key)
    return "\n".join(lines).encode("utf-8")


def sign(secret: str, device_id: str, command: str, args: dict[str, Any] | None, *, ts: float | None = None,
         nonce: str | None = None, key: str | None = None) -> dict[str, Any]:
    """The `auth` object for a request (fresh timestamp and nonce unless given); with `key`, the named-key format."""
    ts = time.time() if ts is None else float(ts)
    nonce = nonce or secrets.token_hex(16)
    digest = hmac.new(secret.encode("utf-8"), signing_string(device_id, command, args, ts, nonce, key), hashlib.sha256)
    auth: dict[str, Any] = {"ts": ts, "nonce": nonce, "sig": digest.hexdigest()}
    if key is not None:
        auth["key"] = key
    return auth


@dataclass
class Verifier:
    """Checks `auth` objects: key, signature, timestamp window (wall clock) and nonce reuse (remembered 2 x window)."""

    keys: dict[str, str] | str = field(repr=False)
    """Active keys, id -> secret; a plain string is the single key `default`."""
    device_id: str
    revoked: frozenset[str] = frozenset()
    max_skew_s: float = 300.0
    max_nonces: int = 10_000
    not_before: float | None = None
    """Refuse timestamps older than this (wall clock): the nonce memory starts empty, so a request signed
    before this verifier existed (daemon or worker restart) could otherwise be replayed once more."""

    def __post_init__(self) -> None:
        if isinstance(self.keys, str):
            self.keys = {LEGACY_KEY: self.keys}
        self._nonces: OrderedDict[str, float] = OrderedDict()

    def verify(self, command: str, args: dict[str, Any] | None, auth: Any, now: float | None = None) -> str:
        """Return the id of the key that signed; raise AuthError naming the problem otherwise."""
        if auth is None:
            raise AuthError(f"unsigned privileged request refused: {command!r} must carry auth {{key, ts, nonce, sig}} "
                            "(HMAC-SHA256 with one of the bin's security.keys; see the README, Security)")
        if not isinstance(auth, dict) or not {"ts", "nonce", "sig"} <= set(auth) <= {"key", "ts", "nonce", "sig"}:
            raise AuthError("auth: must be an object with key, ts, nonce and sig (key may be left out while the bin "
                            "has a single signing key)")
        ts, nonce, sig = auth["ts"], auth["nonce"], auth["sig"]
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise AuthError("auth.ts: must be a finite number (unix seconds)")
        if not isinstance(nonce, str) or not NONCE_RE.match(nonce):
            raise AuthError("auth.nonce: must be 16-64 lower-case hex characters")
        if not isinstance(sig, str) or not SIG_RE.match(sig):
            raise AuthError("auth.sig: must be 64 lower-case hex characters (HMAC-SHA256)")
        key_id = self._key_id(auth.get("key"), "key" in auth)
        named = auth.get("key")
        expected = sign(self.keys[key_id], self.device_id, command, args, ts=ts, nonce=nonce, key=named)["sig"]
        if not hmac.compare_digest(expected, sig):
            raise AuthError("auth.sig: signature does not match (wrong secret, device, command, args or key)")
        now = time.time() if now is None else now
        if now < CLOCK_SANE_AFTER:
            raise AuthError("the bin's clock is not set yet (no NTP since boot): signed requests cannot be checked")
        if abs(now - float(ts)) > self.max_skew_s:
            raise AuthError(f"auth.ts: stale or from the future ({now - float(ts):+.0f}s off; allowed ±{self.max_skew_s:.0f}s)")
        if self.not_before is not None and now < self.not_before:
            self.not_before = None  # the clock was stepped back (NTP fixing a fast RTC): do not lock everyone out
        if self.not_before is not None and float(ts) < self.not_before:
            raise AuthError("auth.ts: signed before the daemon (re)started its replay memory; sign the request again")
        self._forget_older_than(now - 2 * self.max_skew_s)
        if nonce in self._nonces:
            raise AuthError("auth.nonce: already used (replayed request)")
        self._nonces[nonce] = float(ts)
        while len(self._nonces) > self.max_nonces:
            self._nonces.popitem(last=False)
        return key_id

    def _key_id(self, key: Any, given: bool) -> str:
        if not given:
            if len(self.keys) == 1:
                return next(iter(self.keys))
            raise AuthError("auth.key: required: this bin has several signing keys (or none active); name the one "
                            "you signed with")
        if not isinstance(key, str) or not KEY_ID_RE.match(key):
            raise AuthError("auth.key: must be a key id (lower-case letters, digits, '-' or '_', at most 32)")
        if key in self.revoked:
            raise AuthError(f"auth.key: key {key!r} is revoked")
        if key not in self.keys:
            raise AuthError(f"auth.key: unknown key {key!r}")
        return key

    def _forget_older_than(self, cutoff: float) -> None:
        for nonce, ts in list(self._nonces.items()):
            if ts < cutoff:
                del self._nonces[nonce]
