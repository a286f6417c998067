"""JWT verification keys: secrets, PEM public keys and JWKS documents, parsed (no I/O).

Each :class:`JwtKey` knows the algorithms it may verify, derived from its type (an HMAC
secret: HS*; an RSA key: RS*/PS*; an EC key: the ES* of its curve; Ed25519/Ed448:
EdDSA). That is what makes algorithm confusion impossible: a public key never verifies
an HS* token. Public through :mod:`agentcast.protocol.jwt_auth`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from .auth import AuthFailure

__all__ = [
    "HMAC_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "JwtKey",
    "JwtKeySet",
    "PublicKey",
    "parse_jwks",
]

# RFC 7518 3.2: an HMAC key must be at least as long as the hash output.
HMAC_ALGORITHMS: Mapping[str, int] = {"HS256": 32, "HS384": 48, "HS512": 64}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
SUPPORTED_ALGORITHMS = frozenset(
    {*HMAC_ALGORITHMS, *_RSA_ALGORITHMS, *_EC_ALGORITHMS.values(), "EdDSA"}
)
# NIST SP 800-131A and PyJWT's own warning threshold: weaker RSA keys are refused.
_MIN_RSA_BITS = 2048

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

_UNKNOWN_KID = AuthFailure("unknown key id")
_MISSING_KID = AuthFailure("missing key id")


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtKey:
    """One verification key and the algorithms it may verify."""

    material: bytes | PublicKey = field(repr=False)
    algorithms: frozenset[str]
    kid: str | None = None

    @property
    def is_secret(self) -> bool:
        return isinstance(self.material, bytes)


@dataclass(frozen=True, slots=True)
class JwtKeySet:
    """The keys an authenticator verifies with: one secret, or public keys."""

    keys: tuple[JwtKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("no usable signing key")
        if len({key.is_secret for key in self.keys}) > 1:
            raise ValueError("a key set holds either a secret or public keys, not both")
        kids = [key.kid for key in self.keys if key.kid is not None]
        if len(kids) != len(set(kids)):
            raise ValueError("duplicate key id (kid) in the key set")

    @property
    def is_secret(self) -> bool:
        return self.keys[0].is_secret

    @property
    def algorithms(self) -> frozenset[str]:
        """Every algorithm some key of the set can verify."""
        return frozenset().union(*(key.algorithms for key in self.keys))

    def select(self, kid: str | None) -> JwtKey | AuthFailure:
        """The key for a token whose header names *kid* (or no ``kid``)."""
        if len(self.keys) == 1 and (kid is None or self.keys[0].kid in (None, kid)):
            # A single secret or PEM key has no id: it verifies whatever kid says.
            return self.keys[0]
        if kid is None:
            return _MISSING_KID
        for key in self.keys:
            if key.kid == kid:
                return key
        return _UNKNOWN_KID

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def from_secret(cls, secret: str | bytes) -> JwtKeySet:
        """An HMAC secret (a str is taken as UTF-8)."""
        material = secret.encode() if isinstance(secret, str) else bytes(secret)
        if material.lstrip().startswith(b"-----BEGIN"):
            raise ValueError("the JWT secret is a PEM key: configure it as a public key")
        algorithms = frozenset(a for a, n in HMAC_ALGORITHMS.items() if len(material) >= n)
        if not algorithms:
            raise ValueError(
                "a JWT secret must be at least 32 bytes (RFC 7518 3.2); for example "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return cls((JwtKey(material=material, algorithms=algorithms),))

    @classmethod
    def from_pem(cls, pem: str | bytes) -> JwtKeySet:
        """A PEM public key (``BEGIN PUBLIC KEY``) or X.509 certificate."""
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                loaded: object = x509.load_pem_x509_certificate(data).public_key()
            else:
                loaded = load_pem_public_key(data)
        except ValueError:
            raise ValueError(
                "not a PEM public key or certificate (a private key is not accepted)"
            ) from None
        return cls((_public_key(loaded, None),))

    @classmethod
    def from_jwks(cls, text: str | bytes) -> JwtKeySet:
        """A JWKS document (``{"keys": [...]}``): see :func:`parse_jwks`."""
        return parse_jwks(text)


def parse_jwks(text: str | bytes) -> JwtKeySet:
    """Build a :class:`JwtKeySet` from the JSON text of a JWKS document.

    Keys for another use than signatures (``"use"`` other than ``"sig"``), of a type we
    do not know, or marked for an algorithm we do not support are skipped. Raises
    :class:`ValueError` for a document that is not a JWKS, holds a private or symmetric
    key, repeats a ``kid``, or has no usable key.
    """
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("the JWKS is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('a JWKS is a JSON object with a "keys" array')
    keys: list[JwtKey] = []
    for index, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict):
            raise ValueError(f"JWKS key {index} is not an object")
        key = _jwk(jwk, index)
        if key is not None:
            keys.append(key)
    return JwtKeySet(tuple(keys))


_LOADERS: dict[str, Any] = {
    "RSA": RSAAlgorithm.from_jwk,
    "EC": ECAlgorithm.from_jwk,
    "OKP": OKPAlgorithm.from_jwk,
}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")


def _jwk(jwk: dict[str, Any], index: int) -> JwtKey | None:
    kty = jwk.get("kty")
    if jwk.get("use", "sig") != "sig":
        return None
    if kty == "oct":
        raise ValueError(f"JWKS key {index} is a symmetric key: configure a JWT secret instead")
    loader = _LOADERS.get(kty) if isinstance(kty, str) else None
    if loader is None:
        return None
    if any(member in jwk for member in _PRIVATE_MEMBERS):
        raise ValueError(f"JWKS key {index} holds private key material: publish public keys")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError(f"JWKS key {index} has a kid that is not a string")
    try:
        loaded = loader(jwk)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise ValueError(f"JWKS key {index} is not a valid {kty} public key") from None
    key = _public_key(loaded, kid)
    alg = jwk.get("alg")
    if alg is None:
        return key
    if alg not in key.algorithms:
        return None  # marked for an algorithm we do not verify with this key
    return JwtKey(material=key.material, algorithms=frozenset({alg}), kid=kid)


def _public_key(key: object, kid: str | None) -> JwtKey:
    algorithms: frozenset[str]
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"RSA keys under {_MIN_RSA_BITS} bits are refused")
        algorithms = _RSA_ALGORITHMS
    elif isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise ValueError(f"unsupported elliptic curve {key.curve.name}")
        algorithms = frozenset({alg})
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        algorithms = frozenset({"EdDSA"})
    else:
        raise ValueError("unsupported key type (RSA, EC or Ed25519/Ed448 public keys only)")
    return JwtKey(material=key, algorithms=algorithms, kid=kid)
