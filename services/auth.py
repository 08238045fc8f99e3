"""JWT verification for the WebSocket handshake, and a token tool for developers.

    python -m services.auth mint --sub alice --rooms 'general,team-*' --ttl 3600

signs with JWT_SECRET (or its alias JWT_DEV, or --secret). Verification pins the algorithm list from settings, so
`alg: none` and algorithm confusion (an HS256 token signed with a public key) are refused.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import math
import os
import re
import secrets
import sys
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from services.errors import AuthError, ConfigError
from services.ids import iso
from services.settings import Settings
from services.settings.options import program

MIN_SECRET_BYTES = 32
MAX_TOKEN_BYTES = 8192  # far above any real JWT; bounds what an unauthenticated client makes us parse
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Identity:
    user_id: str
    expires_at: float
    rooms: tuple[str, ...] | None  # None: the token has no `rooms` claim
    issued_at: float | None = None  # `iat`; None: the token does not say (revocations then refuse it)

    def may_join(self, room_id: str) -> bool:
        return self._claim is not None and self._claim.allows(room_id)

    @functools.cached_property
    def _claim(self) -> RoomClaim | None:
        """Made at the first join that asks, then kept with the identity (and so with its socket),
        shared by the identities with the same claim (a user's sockets, its refreshes) and gone with
        the last of them: live sockets bound it, not a count of cached claims."""
        if self.rooms is None:
            return None
        claim = _CLAIMS.get(self.rooms)
        if claim is None:
            claim = _CLAIMS[self.rooms] = RoomClaim(self.rooms)
        return claim


class RoomClaim:
    """A `rooms` claim, sorted once so that a room id is tested in time that does not grow with the
    claim (issue: a refresh with a 750-pattern claim and 100 joined rooms ran 75,000 fnmatch calls,
    10.5 ms of the loop): ids without a glob character in a set, `prefix*` patterns as prefixes
    (one set lookup per distinct prefix length), and only the other globs matched one by one."""

    __slots__ = ("__weakref__", "_exact", "_globs", "_lengths", "_prefixes")

    def __init__(self, patterns: Sequence[str]) -> None:
        self._exact: set[str] = set()
        self._prefixes: set[str] = set()
        self._globs: list[str] = []
        for pattern in patterns:
            if not _GLOB.search(pattern):
                self._exact.add(pattern)
            elif pattern.endswith("*") and not _GLOB.search(pattern[:-1]):
                self._prefixes.add(pattern[:-1])
            else:
                self._globs.append(pattern)
        self._lengths = sorted({len(p) for p in self._prefixes})

    def allows(self, room_id: str) -> bool:
        if room_id in self._exact:
            return True
        if any(room_id[:n] in self._prefixes for n in self._lengths if n <= len(room_id)):
            return True
        return any(fnmatch.fnmatchcase(room_id, glob) for glob in self._globs)


_CLAIMS: weakref.WeakValueDictionary[tuple[str, ...], RoomClaim] = weakref.WeakValueDictionary()


class TokenVerifier:
    """Verifies tokens; remembers the last VERIFIED_TOKENS it accepted, as a storm presents the same
    tokens again (BENCHMARKS.md, "Reconnect storm"): `exp` checked at every use, revocations read by
    the handshake every time, at most VERIFIED_TOKEN_BYTES each (about 12 MiB in all)."""

    VERIFIED_TOKENS = 8192
    VERIFIED_TOKEN_BYTES = 1024

    def __init__(self, settings: Settings) -> None:
        self._verified: dict[str, Identity] = {}
        self._algorithms = list(settings.jwt_algorithms)
        self._leeway = settings.jwt_leeway
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._hmac_key = settings.jwt_secret
        self._public_key = _read_key(settings.jwt_public_key) if settings.jwt_public_key else None

    def _key_for(self, alg: str) -> Any:
        if alg.startswith("HS"):
            return self._hmac_key
        return self._public_key

    def verify(self, token: str) -> Identity:
        """The token's identity, or AuthError. Nothing else escapes, whatever the token holds: an
        unauthenticated client must not be able to turn its token into a 500 (issue: nested JSON
        raised RecursionError, `"exp": Infinity` OverflowError)."""
        if not token:
            raise AuthError("missing token")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError(f"token longer than {MAX_TOKEN_BYTES} bytes")
        known = self._verified.pop(token, None)
        if known is not None and known.expires_at + self._leeway > time.time():
            self._verified[token] = known  # most recently used last
            return known
        try:
            identity = self._verify(token)
        except AuthError:
            raise
        except (RecursionError, ValueError, OverflowError, TypeError, KeyError, AttributeError):
            # Safety net: a library below us choked on hostile input (deep nesting, NaN,
            # Infinity, odd types). That is a token we cannot use, not a server error.
            raise AuthError("malformed token") from None
        if len(token) <= self.VERIFIED_TOKEN_BYTES:
            if len(self._verified) >= self.VERIFIED_TOKENS:
                del self._verified[next(iter(self._verified))]  # the least recently used
            self._verified[token] = identity
        return identity

    def _verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthError("token algorithm not allowed")
        key = self._key_for(alg)
        if key is None:
            raise AuthError("token algorithm not allowed")
        options: dict[str, Any] = {"require": ["exp"], "verify_aud": self._audience is not None}
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                leeway=self._leeway,
                audience=self._audience,
                issuer=self._issuer,
                options=options,
            )
        except jwt.PyJWTError as exc:
            raise AuthError(_reason(exc)) from None
        return _identity(claims)


# What a client is told for each of PyJWT's refusals (the first that matches; none holds the token).
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidSignatureError, "invalid token signature"),
    (jwt.InvalidAudienceError, "invalid token audience"),
    (jwt.InvalidIssuerError, "invalid token issuer"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token is missing the {exc.claim} claim"
    return next((reason for kind, reason in _REASONS if isinstance(exc, kind)), "invalid token")


def _identity(claims: dict[str, Any]) -> Identity:
    user = claims.get("sub", claims.get("userId"))
    if isinstance(user, int) and not isinstance(user, bool):
        user = str(user)
    if not isinstance(user, str) or not user or len(user) > 128:
        raise AuthError("token has no usable sub (or userId) claim")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not _is_moment(exp):
        raise AuthError("invalid exp claim")
    rooms_claim = claims.get("rooms")
    rooms: tuple[str, ...] | None = None
    if rooms_claim is not None:
        if isinstance(rooms_claim, str):
            rooms_claim = [part.strip() for part in rooms_claim.split(",") if part.strip()]
        if not isinstance(rooms_claim, list) or not all(isinstance(r, str) for r in rooms_claim):
            raise AuthError("invalid rooms claim")
        rooms = tuple(rooms_claim)
    iat = claims.get("iat")
    issued_at = (
        float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) and math.isfinite(iat) else None
    )
    return Identity(user_id=user, expires_at=float(exp), rooms=rooms, issued_at=issued_at)


def _is_moment(seconds: float) -> bool:
    """A time the gateway can turn into a deadline and an ISO-8601 `expiresAt` (issue: an `exp` past
    the year 9999 passed the handshake, then failed a refresh with a traceback)."""
    if not math.isfinite(seconds):
        return False
    try:
        iso(seconds)
    except (OverflowError, OSError, ValueError):
        return False
    return True


def _read_key(value: str) -> str:
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as fh:
                return fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read JWT_PUBLIC_KEY file {value[1:]}: {exc.strerror}") from None
    return value.replace("\\n", "\n")


def too_short(secret: str, dev: bool) -> bool:
    """A guessable HS256 secret, allowed only in dev mode: the gateway refuses to start with one, and
    `mint` to sign with one (its tokens would be refused)."""
    return len(secret.encode()) < MIN_SECRET_BYTES and not dev


def check_secret(settings: Settings) -> None:
    secret = settings.jwt_secret
    if secret is not None and too_short(secret, settings.dev):
        raise ConfigError(
            f"JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes; use a longer secret (or --dev for local use)"
        )


def generate_secret() -> str:
    return secrets.token_urlsafe(48)


def mint(
    secret: str,
    sub: str,
    ttl: float = 3600,
    rooms: Sequence[str] | None = None,
    algorithm: str = "HS256",
    **extra: Any,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(ttl), **extra}
    if rooms is not None:
        claims["rooms"] = list(rooms)
    return jwt.encode(claims, secret, algorithm=algorithm)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program("python -m services.auth"), description="Developer token tool.")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mint", help="print a signed HS256 token")
    m.add_argument("--sub", required=True, help="user id")
    m.add_argument("--rooms", default=None, help="comma-separated room ids or globs for the rooms claim")
    m.add_argument("--ttl", type=int, default=3600, help="seconds until exp")
    m.add_argument("--secret", default=None, help="signing secret (default: $JWT_SECRET, else $JWT_DEV)")
    m.add_argument("--aud", default=None)
    m.add_argument("--iss", default=None)
    m.add_argument("--dev", action="store_true", help=f"allow a secret shorter than {MIN_SECRET_BYTES} bytes")
    args = parser.parse_args(argv)
    secret = args.secret or os.environ.get("JWT_SECRET") or os.environ.get("JWT_DEV")
    if not secret:
        print(
            "error: no secret: set JWT_SECRET (the gateway's) or pass --secret; a gateway started without one"
            " (make run) keeps its generated secret to itself: ask it at /dev/token?sub=NAME instead",
            file=sys.stderr,
        )
        return 2
    if too_short(secret, args.dev):
        print(
            f"error: the secret is shorter than {MIN_SECRET_BYTES} bytes, which the gateway refuses unless it"
            " runs with --dev; use a longer one (openssl rand -hex 32), or pass --dev",
            file=sys.stderr,
        )
        return 2
    rooms = [r.strip() for r in args.rooms.split(",") if r.strip()] if args.rooms else None
    extra: dict[str, Any] = {}
    if args.aud:
        extra["aud"] = args.aud
    if args.iss:
        extra["iss"] = args.iss
    print(mint(secret, args.sub, ttl=args.ttl, rooms=rooms, **extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
