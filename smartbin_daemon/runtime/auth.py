"""HMAC-SHA256 request signatures for privileged commands (shared by the daemon and `smartbinctl`).

A signed request carries `"auth": {"ts": <unix seconds>, "nonce": "<hex>", "sig": "<hex>"}` beside
`transaction` and `args`. The signature covers the device id, the command, the canonical JSON of the
args, the timestamp and the nonce, one per line, so a signature cannot be replayed for another bin,
another command or other arguments; the timestamp window and the nonce memory stop replays of the
same request.
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
SIG_RE = re.compile(r"^[0-9a-f]{64}$")


class AuthError(Exception):
    """A privileged request whose signature is missing, malformed, stale, replayed or wrong."""


def canonical_args(args: dict[str, Any] | None) -> str:
    """The args as signed: compact JSON with sorted keys (an absent args object signs as `{}`)."""
    return json.dumps(args or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def signing_string(device_id: str, command: str, args: dict[str, Any] | None, ts: float, nonce: str) -> bytes:
    """What the HMAC covers: device id, command, canonical args, timestamp and nonce, one per line."""
    return "\n".join([device_id, command, canonical_args(args), repr(float(ts)), nonce]).encode("utf-8")


def sign(secret: str, device_id: str, command: str, args: dict[str, Any] | None, *, ts: float | None = None,
         nonce: str | None = None) -> dict[str, Any]:
    """The `auth` object for a request (fresh timestamp and nonce unless given)."""
    ts = time.time() if ts is None else float(ts)
    nonce = nonce or secrets.token_hex(16)
    digest = hmac.new(secret.encode("utf-8"), signing_string(device_id, command, args, ts, nonce), hashlib.sha256)
    return {"ts": ts, "nonce": nonce, "sig": digest.hexdigest()}


@dataclass
class Verifier:
    """Checks `auth` objects: signature, timestamp window (wall clock) and nonce reuse (remembered 2 x window)."""

    secret: str = field(repr=False)
    device_id: str
    max_skew_s: float = 300.0
    max_nonces: int = 10_000
    not_before: float | None = None
    """Refuse timestamps older than this (wall clock): the nonce memory starts empty, so a request signed
    before this verifier existed (daemon or worker restart) could otherwise be replayed once more."""

    def __post_init__(self) -> None:
        self._nonces: OrderedDict[str, float] = OrderedDict()

    def verify(self, command: str, args: dict[str, Any] | None, auth: Any, now: float | None = None) -> None:
        """Raise AuthError naming the problem; return quietly when the request is authentic and fresh."""
        if auth is None:
            raise AuthError(f"unsigned privileged request refused: {command!r} must carry auth {{ts, nonce, sig}} "
                            "(HMAC-SHA256 with security.hmac_secret; see the README, Security)")
        if not isinstance(auth, dict) or set(auth) != {"ts", "nonce", "sig"}:
            raise AuthError("auth: must be an object with exactly ts, nonce and sig")
        ts, nonce, sig = auth["ts"], auth["nonce"], auth["sig"]
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise AuthError("auth.ts: must be a finite number (unix seconds)")
        if not isinstance(nonce, str) or not NONCE_RE.match(nonce):
            raise AuthError("auth.nonce: must be 16-64 lower-case hex characters")
        if not isinstance(sig, str) or not SIG_RE.match(sig):
            raise AuthError("auth.sig: must be 64 lower-case hex characters (HMAC-SHA256)")
        expected = sign(self.secret, self.device_id, command, args, ts=ts, nonce=nonce)["sig"]
        if not hmac.compare_digest(expected, sig):
            raise AuthError("auth.sig: signature does not match (wrong secret, device, command or args)")
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

    def _forget_older_than(self, cutoff: float) -> None:
        for nonce, ts in list(self._nonces.items()):
            if ts < cutoff:
                del self._nonces[nonce]
