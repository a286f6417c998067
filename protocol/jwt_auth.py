"""JWT verification (PROTOCOL.md section 2): a pure :class:`Authenticator`.

:class:`JwtAuthenticator` checks a token's signature with PyJWT, then its claims against
the ``wall`` time it is given (it reads no clock, and no file: the adapter loads the key
material and calls :meth:`JwtAuthenticator.replace_keys` when it changes). Needs the
``jwt`` extra (``pyjwt[crypto]``); import it from this module, it is not re-exported by
:mod:`agentcast.protocol`.

Keys, as a :class:`JwtKeySet`:

* a secret (:meth:`JwtKeySet.from_secret`) for HS256/384/512; at least 32 bytes, and
  HS384/HS512 only with 48/64 bytes (RFC 7518 3.2: a key as long as the hash);
* a PEM public key or certificate (:meth:`JwtKeySet.from_pem`): RSA (2048 bits or more)
  for RS256/384/512 and PS256/384/512, EC P-256/P-384/P-521 for ES256/ES384/ES512,
  Ed25519/Ed448 for EdDSA;
* a JWKS document (:func:`parse_jwks`), its key chosen by the token's ``kid``.

Refused by construction: algorithm ``none`` (never on any allow-list), algorithm confusion
(each key verifies only the algorithms of its own type, so an HS256 token "signed" with
an RSA public key as the HMAC secret is not even tried), keys named by the token itself
(``jku``, ``x5u``, ``jwk`` headers are ignored), and ``crit`` extensions.

Claims: ``exp`` is required and strict (a token is expired from ``exp`` on, and the
connection is closed with 4001 at that moment: :attr:`Identity.expires_at` is ``exp``);
``nbf`` and ``iat``, when present, may be up to ``leeway`` seconds in the future, for an
issuer whose clock runs ahead of ours; ``iss`` and ``aud`` are checked when configured,
and a token that names an audience is refused when none is configured (RFC 7519 4.1.3);
the user id is the ``sub`` claim (the name is configurable). What the token may subscribe
to (PROTOCOL.md 4a) is its ``channels`` claim (name configurable): a list of channel names
and ``prefix*`` patterns; a token without it may subscribe to no channel, and a token whose
claim is not such a list is refused (an issuer's mistake should show, not widen or narrow
access silently).

Failure reasons are short, fixed strings (``"token expired"``, ``"invalid signature"``,
...): they never contain the token or a value taken from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import jwt

from ._jwt_keys import HMAC_ALGORITHMS, SUPPORTED_ALGORITHMS, JwtKey, JwtKeySet, parse_jwks
from .auth import AuthFailure, AuthResult, Identity
from .scope import NO_CHANNELS, ChannelGrant

__all__ = [
    "DEFAULT_LEEWAY",
    "HMAC_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "JwtAuthenticator",
    "JwtKey",
    "JwtKeySet",
    "make_dev_token",
    "parse_jwks",
]

# Issuers' and our clocks disagree by a few seconds; 30 s absorbs that (and NTP hiccups)
# without accepting a token noticeably before its nbf/iat. (Spring Security uses 60 s,
# PyJWT and jose 0.)
DEFAULT_LEEWAY = 30.0
# A JWT travels in the request line or a header, which are capped at 16 KiB
# (PROTOCOL.md 1); the same cap applies to an in-band refresh.
MAX_TOKEN_LENGTH = 16 * 1024
# The user id goes into every presence message each client receives.
MAX_USER_ID_LENGTH = 256

# Verifies signatures only (claims are ours); knows no algorithm we do not support.
_JWS = jwt.PyJWS(algorithms=sorted(SUPPORTED_ALGORITHMS))

_MALFORMED = AuthFailure("malformed token")
_ALGORITHM = AuthFailure("algorithm not allowed")
_SIGNATURE = AuthFailure("invalid signature")
_EXPIRED = AuthFailure("token expired")
_NOT_YET_VALID = AuthFailure("token not yet valid")
_ISSUER = AuthFailure("invalid issuer")
_AUDIENCE = AuthFailure("invalid audience")
_INVALID = AuthFailure("invalid token")  # anything else PyJWT or cryptography refused


def _allowed(keys: JwtKeySet, configured: frozenset[str] | None) -> frozenset[str]:
    """The algorithms accepted with *keys*: *configured* checked against them, or, when
    nothing is configured, whatever the keys can verify."""
    if configured is None:
        return keys.algorithms
    if keys.is_secret:
        wrong = sorted(a for a in configured if a not in HMAC_ALGORITHMS)
        if wrong:
            raise ValueError(f"{', '.join(wrong)} need a public key, not a secret")
    else:
        wrong = sorted(a for a in configured if a in HMAC_ALGORITHMS)
        if wrong:
            raise ValueError(
                f"{', '.join(wrong)} need a secret: with a public key they would allow "
                "algorithm confusion"
            )
    allowed = configured & keys.algorithms
    if not allowed:
        raise ValueError("no configured key can verify the allowed algorithms")
    return allowed


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class JwtAuthenticator:
    """Verifies JWTs; ``authenticate(token, wall)`` never raises.

    *algorithms* is the allow-list (default: every algorithm the keys can verify: HS* for
    a secret, the key types' own for public keys); ``none`` and HS* with public keys
    raise :class:`ValueError`. *audience* may be one value or several (a token must name
    one of them).
    """

    __slots__ = (
        "_audience",
        "_channels_claim",
        "_configured",
        "_issuer",
        "_leeway",
        "_state",
        "_user_claim",
    )

    def __init__(
        self,
        keys: JwtKeySet,
        *,
        algorithms: Iterable[str] | None = None,
        issuer: str | None = None,
        audience: str | Iterable[str] | None = None,
        leeway: float = DEFAULT_LEEWAY,
        user_claim: str = "sub",
        channels_claim: str = "channels",
    ) -> None:
        configured: frozenset[str] | None = None
        if algorithms is not None:
            configured = frozenset(algorithms)
            if any(a.lower() == "none" for a in configured):
                raise ValueError('algorithm "none" is never allowed')
            unknown = sorted(configured - SUPPORTED_ALGORITHMS)
            if unknown:
                raise ValueError(f"unsupported JWT algorithms: {', '.join(unknown)}")
        if not (math.isfinite(leeway) and leeway >= 0):
            raise ValueError("leeway must be a non-negative number of seconds")
        if not user_claim:
            raise ValueError("user_claim must not be empty")
        if not channels_claim:
            raise ValueError("channels_claim must not be empty")
        self._configured = configured
        self._issuer = issuer
        if audience is None:
            self._audience: frozenset[str] | None = None
        else:
            self._audience = frozenset((audience,) if isinstance(audience, str) else audience)
            if not self._audience:
                raise ValueError("audience must not be empty")
        self._leeway = float(leeway)
        self._user_claim = user_claim
        self._channels_claim = channels_claim
        # Keys and the allow-list live in one tuple, swapped in one assignment.
        self._state = (keys, _allowed(keys, configured))

    @property
    def keys(self) -> JwtKeySet:
        return self._state[0]

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms accepted now."""
        return self._state[1]

    def replace_keys(self, keys: JwtKeySet) -> None:
        """Verify with *keys* from now on (key rotation: the adapter re-read the file).

        Raises :class:`ValueError`, keeping the current keys, if *keys* cannot verify
        the configured algorithms (or would need HS* with public keys)."""
        self._state = (keys, _allowed(keys, self._configured))

    def authenticate(self, token: str, wall: float) -> AuthResult:
        try:
            return self._verify(token, wall)
        except Exception:  # the Authenticator contract: a bad token never raises
            return _INVALID

    def _verify(self, token: str, wall: float) -> AuthResult:
        keys, allowed = self._state
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return _MALFORMED
        try:
            header = _JWS.get_unverified_header(token)
        except jwt.PyJWTError:
            return _MALFORMED
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in allowed:
            return _ALGORITHM
        kid = header.get("kid")
        if (
            "crit" in header  # no extension is understood here (RFC 7515 4.1.11)
            or header.get("b64", True) is not True  # nor an unencoded payload (RFC 7797)
            or not isinstance(kid, str | None)
        ):
            return _MALFORMED
        key = keys.select(kid)
        if isinstance(key, AuthFailure):
            return key
        if alg not in key.algorithms:
            return _ALGORITHM
        try:
            decoded = _JWS.decode_complete(token, key.material, algorithms=[alg])
        except jwt.InvalidSignatureError:
            return _SIGNATURE
        try:
            claims = json.loads(decoded["payload"])
        except (ValueError, RecursionError):
            return _MALFORMED
        if not isinstance(claims, dict):
            return _MALFORMED
        return self._check_claims(claims, wall)

    def _check_claims(self, claims: dict[str, Any], wall: float) -> AuthResult:
        if "exp" not in claims:
            return AuthFailure("missing claim: exp")
        exp = _number(claims["exp"])
        if exp is None:
            return AuthFailure("invalid claim: exp")
        if wall >= exp:
            return _EXPIRED
        for name in ("nbf", "iat"):
            if name in claims:
                value = _number(claims[name])
                if value is None:
                    return AuthFailure(f"invalid claim: {name}")
                if value > wall + self._leeway:
                    return _NOT_YET_VALID
        if self._issuer is not None:
            if "iss" not in claims:
                return AuthFailure("missing claim: iss")
            if claims["iss"] != self._issuer:
                return _ISSUER
        failure = self._check_audience(claims)
        if failure is not None:
            return failure
        name = self._user_claim
        user_id = claims.get(name)
        if user_id is None:
            return AuthFailure(f"missing claim: {name}")
        if (
            not isinstance(user_id, str)
            or not user_id
            or len(user_id) > MAX_USER_ID_LENGTH
            or not _has_utf8_form(user_id)
        ):
            return AuthFailure(f"invalid claim: {name}")
        channels = NO_CHANNELS
        if self._channels_claim in claims:
            try:
                channels = ChannelGrant.parse(claims[self._channels_claim])
            except ValueError:
                return AuthFailure(f"invalid claim: {self._channels_claim}")
        return Identity(user_id=user_id, expires_at=exp, channels=channels)

    def _check_audience(self, claims: dict[str, Any]) -> AuthFailure | None:
        expected = self._audience
        if "aud" not in claims:
            return None if expected is None else AuthFailure("missing claim: aud")
        if expected is None:
            return _AUDIENCE  # RFC 7519 4.1.3: we are not among the audiences it names
        aud = claims["aud"]
        named = [aud] if isinstance(aud, str) else aud
        if not isinstance(named, list) or not all(isinstance(a, str) for a in named):
            return _AUDIENCE
        return None if expected.intersection(named) else _AUDIENCE


def make_dev_token(
    secret: str | bytes,
    sub: str,
    ttl: float,
    wall: float,
    algorithm: str = "HS256",
    *,
    issuer: str | None = None,
    audience: str | None = None,
    channels: Iterable[str] | None = None,
) -> str:
    """A signed HMAC token for *sub*, valid from *wall* for *ttl* seconds (``agentcast
    token``): ``iat`` is *wall*, ``exp`` *wall* + *ttl*, rounded to whole seconds.
    *channels* (names and ``prefix*`` patterns) becomes the ``channels`` claim."""
    keys = JwtKeySet.from_secret(secret)
    if algorithm not in HMAC_ALGORITHMS:
        raise ValueError("a dev token is signed with a secret: HS256, HS384 or HS512")
    if algorithm not in keys.algorithms:
        raise ValueError(f"{algorithm} needs a secret of {HMAC_ALGORITHMS[algorithm]} bytes")
    if not sub:
        raise ValueError("sub must not be empty")
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError("ttl must be a positive number of seconds")
    claims: dict[str, Any] = {
        "sub": sub,
        "iat": math.floor(wall),
        "exp": math.ceil(wall + ttl),
    }
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    if channels is not None:
        patterns = list(channels) if not isinstance(channels, str) else [channels]
        ChannelGrant.parse(patterns)  # ValueError for an entry that is no channel or pattern
        claims["channels"] = patterns
    material = keys.keys[0].material
    assert isinstance(material, bytes)
    return jwt.encode(claims, material, algorithm=algorithm)


def _has_utf8_form(text: str) -> bool:
    """JSON allows a lone surrogate (``"\\ud800"``); it cannot go out in a UTF-8 frame."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
