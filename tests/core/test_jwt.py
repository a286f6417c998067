"""PROTOCOL.md 2: the JWT authenticator, attacked, in the core (scripted time)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric import x25519 as x25519_key
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from agentcast.protocol import AuthFailure, AuthRequested, Hub, Identity, ServerConnection, Settings
from agentcast.protocol.jwt_auth import (
    JwtAuthenticator,
    JwtKeySet,
    make_dev_token,
    parse_jwks,
)
from agentcast.protocol.scope import NO_CHANNELS

WALL = 1_766_754_000.0
SECRET = "correct-horse-battery-staple-0123456789"  # 39 bytes: HS256 only
ISSUER = "https://issuer.example"
AUDIENCE = "agentcast"


# -- keys (generated once: RSA generation takes a moment) ---------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(private: Any) -> bytes:
    public = private.public_key()
    return public.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _jwk(private: Any, kid: str, **extra: object) -> dict[str, object]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    return {**jwk, "kid": kid, **extra}


def _jwks(*keys: dict[str, object]) -> str:
    return json.dumps({"keys": list(keys)})


def _claims(**override: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "sub": "user_1",
        "iat": int(WALL),
        "exp": int(WALL) + 300,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    claims.update(override)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, object], claims: dict[str, object], key: bytes) -> str:
    """A token signed by hand with HMAC-SHA256 over *key* (PyJWT refuses to make some)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


# -- driving a ServerConnection --------------------------------------------------------


def _upgrade(
    hub: Hub, auth: JwtAuthenticator, token: str, now: float = 0.0, wall: float = WALL
) -> tuple[ServerConnection, WSConnection, bytes]:
    conn = ServerConnection(hub, now=now, client="198.51.100.7")
    client = WSConnection(ConnectionType.CLIENT)
    conn.receive_data(
        client.send(Request(host="localhost", target=f"/ws?token={token}")), now, wall
    )
    (event,) = conn.events_received()
    assert isinstance(event, AuthRequested)
    assert not event.refresh
    conn.complete_auth(auth.authenticate(event.token, wall), now, wall)
    return conn, client, conn.data_to_send()


def _messages(client: WSConnection, data: bytes) -> list[dict[str, Any]]:
    client.receive_data(data)
    out = []
    for event in client.events():
        if isinstance(event, TextMessage):
            out.append(json.loads(event.data))
        else:
            assert isinstance(event, AcceptConnection)
    return out


def _auth_message(hub: Hub, auth: JwtAuthenticator, token: str) -> dict[str, Any]:
    _, client, data = _upgrade(hub, auth, token)
    first = _messages(client, data)[0]
    assert first["type"] == "auth"
    return first["data"]  # type: ignore[no-any-return]


# -- a valid token of every family -------------------------------------------------------


def _family(alg: str) -> tuple[JwtKeySet, Any]:
    """(verification keys, signing key) for *alg*."""
    if alg.startswith("HS"):
        secret = "k" * {"HS256": 32, "HS384": 48, "HS512": 64}[alg]
        return JwtKeySet.from_secret(secret), secret.encode()
    if alg.startswith(("RS", "PS")):
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    return JwtKeySet.from_pem(_pem(private)), private


@pytest.mark.parametrize(
    "alg", ["HS256", "HS384", "HS512", "RS256", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
)
def test_a_valid_token_of_each_family_authenticates(alg: str) -> None:
    keys, signing_key = _family(alg)
    auth = JwtAuthenticator(keys, issuer=ISSUER, audience=AUDIENCE)
    token = jwt.encode(_claims(), signing_key, algorithm=alg)
    data = _auth_message(Hub(Settings(require_auth=True)), auth, token)
    assert data == {"success": True, "userId": "user_1"}
    assert auth.authenticate(token, WALL) == Identity(
        user_id="user_1", expires_at=WALL + 300, channels=NO_CHANNELS
    )


def test_default_algorithms_follow_the_key_type() -> None:
    assert JwtAuthenticator(JwtKeySet.from_secret("k" * 32)).algorithms == {"HS256"}
    assert JwtAuthenticator(JwtKeySet.from_secret("k" * 64)).algorithms == {
        "HS256",
        "HS384",
        "HS512",
    }
    keys, _ = _family("ES384")
    assert JwtAuthenticator(keys).algorithms == {"ES384"}
    keys, _ = _family("EdDSA")
    assert JwtAuthenticator(keys).algorithms == {"EdDSA"}


# -- attacks ------------------------------------------------------------------------------

Attack = Callable[[rsa.RSAPrivateKey, rsa.RSAPrivateKey], str]


def _rs256(key: rsa.RSAPrivateKey, kid: str | None = "k1", **claims: object) -> str:
    headers = None if kid is None else {"kid": kid}
    return jwt.encode(_claims(**claims), key, "RS256", headers=headers)


def _raw(header: dict[str, object], claims: dict[str, object], signature: bytes = b"") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}." + _b64(
        signature
    )


def _tampered(key: rsa.RSAPrivateKey) -> str:
    header, _, signature = _rs256(key).split(".")
    return f"{header}.{_b64(json.dumps(_claims(sub='admin')).encode())}.{signature}"


def _detached(key: rsa.RSAPrivateKey, header: dict[str, object]) -> str:
    """A JWS with an unencoded, detached payload (RFC 7797): an empty middle segment."""
    signed = jwt.encode(_claims(), key, "RS256", headers={"kid": "k1", **header})
    first, _, signature = signed.split(".")
    return f"{first}..{signature}"


ATTACKS: dict[str, tuple[Attack, str]] = {
    "wrong signature": (lambda key, other: _rs256(other), "invalid signature"),
    "tampered claims": (lambda key, other: _tampered(key), "invalid signature"),
    "alg none": (
        lambda key, other: _raw({"alg": "none", "kid": "k1"}, _claims()),
        "algorithm not allowed",
    ),
    "alg NoNe": (lambda key, other: _raw({"alg": "NoNe"}, _claims()), "algorithm not allowed"),
    "no alg": (lambda key, other: _raw({"kid": "k1"}, _claims()), "algorithm not allowed"),
    "HS256 signed with the public key": (
        lambda key, other: _unsigned({"alg": "HS256", "kid": "k1"}, _claims(), _pem(key)),
        "algorithm not allowed",
    ),
    "expired": (lambda key, other: _rs256(key, exp=int(WALL) - 1), "token expired"),
    "expires this very second": (lambda key, other: _rs256(key, exp=int(WALL)), "token expired"),
    "no exp": (lambda key, other: _rs256(key, exp=None), "missing claim: exp"),
    "exp not a number": (lambda key, other: _rs256(key, exp="soon"), "invalid claim: exp"),
    "nbf not a number": (lambda key, other: _rs256(key, nbf=True), "invalid claim: nbf"),
    "not yet valid (nbf)": (
        lambda key, other: _rs256(key, nbf=int(WALL) + 60),
        "token not yet valid",
    ),
    "issued in the future (iat)": (
        lambda key, other: _rs256(key, iat=int(WALL) + 60),
        "token not yet valid",
    ),
    "wrong iss": (lambda key, other: _rs256(key, iss="https://evil.example"), "invalid issuer"),
    "no iss": (lambda key, other: _rs256(key, iss=None), "missing claim: iss"),
    "wrong aud": (lambda key, other: _rs256(key, aud=["someone-else"]), "invalid audience"),
    "no aud": (lambda key, other: _rs256(key, aud=None), "missing claim: aud"),
    "missing sub": (lambda key, other: _rs256(key, sub=None), "missing claim: sub"),
    "sub not a string": (lambda key, other: _rs256(key, sub=42), "invalid claim: sub"),
    "sub too long": (lambda key, other: _rs256(key, sub="u" * 300), "invalid claim: sub"),
    "unknown kid": (lambda key, other: _rs256(other, kid="k9"), "unknown key id"),
    "no kid with two keys": (lambda key, other: _rs256(key, kid=None), "missing key id"),
    "crit extension": (
        lambda key, other: _detached(key, {"crit": ["b64"], "b64": False}),
        "malformed token",
    ),
    "detached payload": (lambda key, other: _detached(key, {"b64": False}), "malformed token"),
    "unknown crit extension": (
        lambda key, other: jwt.encode(
            _claims(), key, "RS256", headers={"kid": "k1", "crit": ["exp"]}
        ),
        "malformed token",
    ),
    "garbage": (lambda key, other: "garbage", "malformed token"),
    "three garbage segments": (lambda key, other: "aaaa.bbbb.cccc", "malformed token"),
}


def _assert_not_echoed(token: str, data: bytes) -> None:
    for piece in (token, *token.split(".")):
        if len(piece) >= 6:
            assert piece.encode() not in data


@pytest.fixture(scope="module")
def jwks_auth(rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey) -> JwtAuthenticator:
    # Two keys, so a token must say which one (kid); only k1 and k2 are known.
    second = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = parse_jwks(_jwks(_jwk(rsa_key, "k1"), _jwk(second, "k2")))
    return JwtAuthenticator(keys, issuer=ISSUER, audience=AUDIENCE)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_an_attack_is_answered_auth_false_with_a_reason_that_does_not_echo_the_token(
    name: str,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    jwks_auth: JwtAuthenticator,
) -> None:
    make, reason = ATTACKS[name]
    token = make(rsa_key, other_rsa_key)
    hub = Hub()
    _, client, data = _upgrade(hub, jwks_auth, token)
    assert _messages(client, data)[0]["data"] == {"success": False, "error": reason}
    _assert_not_echoed(token, data)
    # Unauthenticated: it counts as a client but never as a user.
    assert (hub.clients_count(), hub.authenticated_clients_count()) == (1, 0)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_with_require_auth_an_attack_gets_401_and_no_websocket(
    name: str,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    jwks_auth: JwtAuthenticator,
) -> None:
    make, reason = ATTACKS[name]
    token = make(rsa_key, other_rsa_key)
    hub = Hub(Settings(require_auth=True))
    conn, _, data = _upgrade(hub, jwks_auth, token)
    assert data.startswith(b"HTTP/1.1 401 ")
    assert data.endswith(f"Unauthorized: {reason}\n".encode())
    _assert_not_echoed(token, data)
    assert conn.closed
    assert hub.clients_count() == 0


def test_the_public_key_confusion_is_refused_with_a_pem_key_too(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    auth = JwtAuthenticator(JwtKeySet.from_pem(_pem(rsa_key)))
    for secret in (_pem(rsa_key), _pem(rsa_key).strip()):
        forged = _unsigned({"alg": "HS256"}, _claims(iss=None, aud=None), secret)
        assert auth.authenticate(forged, WALL) == AuthFailure("algorithm not allowed")
    with pytest.raises(ValueError, match="algorithm confusion"):
        JwtAuthenticator(JwtKeySet.from_pem(_pem(rsa_key)), algorithms=["RS256", "HS256"])


def test_algorithm_none_can_never_be_allowed() -> None:
    for spelling in ("none", "None"):
        with pytest.raises(ValueError, match="never allowed"):
            JwtAuthenticator(JwtKeySet.from_secret(SECRET), algorithms=["HS256", spelling])


def test_the_allow_list_restricts_the_algorithms_a_key_could_verify(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    auth = JwtAuthenticator(JwtKeySet.from_pem(_pem(rsa_key)), algorithms=["RS256"])
    assert auth.authenticate(jwt.encode(_claims(aud=None), rsa_key, "RS256"), WALL) == Identity(
        user_id="user_1", expires_at=WALL + 300, channels=NO_CHANNELS
    )
    ps = jwt.encode(_claims(aud=None), rsa_key, "PS256")
    assert auth.authenticate(ps, WALL) == AuthFailure("algorithm not allowed")


def test_a_key_only_verifies_its_own_algorithm_within_a_jwks(rsa_key: rsa.RSAPrivateKey) -> None:
    ec_private = ec.generate_private_key(ec.SECP256R1())
    ec_jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_private.public_key())), "kid": "e"}
    auth = JwtAuthenticator(parse_jwks(_jwks(_jwk(rsa_key, "r"), ec_jwk)))
    # A valid ES256 signature, but the header points at the RSA key.
    token = jwt.encode(_claims(aud=None), ec_private, "ES256", headers={"kid": "r"})
    assert auth.authenticate(token, WALL) == AuthFailure("algorithm not allowed")
    token = jwt.encode(_claims(aud=None), ec_private, "ES256", headers={"kid": "e"})
    assert isinstance(auth.authenticate(token, WALL), Identity)


# -- claims ---------------------------------------------------------------------------------


def test_nbf_and_iat_have_a_leeway_and_exp_has_none() -> None:
    key = SECRET.encode()
    early = jwt.encode(_claims(nbf=int(WALL) + 20, iat=int(WALL) + 20, aud=None), key, "HS256")
    lenient = JwtAuthenticator(JwtKeySet.from_secret(SECRET), leeway=30)
    strict = JwtAuthenticator(JwtKeySet.from_secret(SECRET), leeway=0)
    assert isinstance(lenient.authenticate(early, WALL), Identity)
    assert strict.authenticate(early, WALL) == AuthFailure("token not yet valid")
    assert isinstance(strict.authenticate(early, WALL + 20), Identity)
    expired = jwt.encode(_claims(exp=int(WALL) - 1, aud=None), key, "HS256")
    assert lenient.authenticate(expired, WALL) == AuthFailure("token expired")


def test_audience_may_be_one_of_several_and_a_token_naming_one_needs_a_configured_one() -> None:
    key = SECRET.encode()
    token = jwt.encode(_claims(aud=["other", AUDIENCE]), key, "HS256")
    keys = JwtKeySet.from_secret(SECRET)
    assert isinstance(
        JwtAuthenticator(keys, audience=[AUDIENCE, "x"]).authenticate(token, WALL), Identity
    )
    assert JwtAuthenticator(keys).authenticate(token, WALL) == AuthFailure("invalid audience")
    odd = jwt.encode(_claims(aud=[AUDIENCE, 7]), key, "HS256")
    assert JwtAuthenticator(keys, audience=AUDIENCE).authenticate(odd, WALL) == AuthFailure(
        "invalid audience"
    )


def test_the_user_claim_is_configurable() -> None:
    token = jwt.encode(_claims(aud=None, uid="u-77"), SECRET.encode(), "HS256")
    auth = JwtAuthenticator(JwtKeySet.from_secret(SECRET), user_claim="uid")
    assert auth.authenticate(token, WALL) == Identity(
        user_id="u-77", expires_at=WALL + 300, channels=NO_CHANNELS
    )
    other = JwtAuthenticator(JwtKeySet.from_secret(SECRET), user_claim="email")
    assert other.authenticate(token, WALL) == AuthFailure("missing claim: email")


def test_a_signed_payload_that_is_not_a_json_object_is_malformed() -> None:
    auth = JwtAuthenticator(JwtKeySet.from_secret(SECRET))
    for payload in (b"not json", b"[1, 2]"):
        token = jwt.PyJWS().encode(payload, SECRET.encode(), "HS256")
        assert auth.authenticate(token, WALL) == AuthFailure("malformed token")
    odd_kid = jwt.encode(_claims(aud=None), SECRET.encode(), "HS256", headers={"kid": "a"})
    odd_kid = _b64(b'{"alg":"HS256","kid":5}') + odd_kid[odd_kid.index(".") :]
    assert auth.authenticate(odd_kid, WALL) == AuthFailure("malformed token")


_FIXED_REASONS = {
    "malformed token",
    "algorithm not allowed",
    "invalid signature",
    "missing key id",
    "unknown key id",
    "invalid token",
}


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=300)
    | st.from_regex(r"[A-Za-z0-9_\-=]*\.[A-Za-z0-9_\-=]*\.[A-Za-z0-9_\-=]*", fullmatch=True)
)
def test_no_input_makes_the_verifier_raise_or_succeed(token: str) -> None:
    auth = JwtAuthenticator(JwtKeySet.from_secret(SECRET))
    result = auth.authenticate(token, WALL)
    assert isinstance(result, AuthFailure)
    assert result.reason in _FIXED_REASONS


def test_an_oversized_token_is_refused_before_it_is_parsed() -> None:
    auth = JwtAuthenticator(JwtKeySet.from_secret(SECRET))
    token = jwt.encode(_claims(aud=None, pad="p" * 20_000), SECRET.encode(), "HS256")
    assert auth.authenticate(token, WALL) == AuthFailure("malformed token")
    assert auth.authenticate("", WALL) == AuthFailure("malformed token")


def test_an_unexpected_library_failure_is_a_refusal_not_an_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import agentcast.protocol.jwt_auth as module

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(module._JWS, "decode_complete", broken)
    token = jwt.encode(_claims(aud=None), SECRET.encode(), "HS256")
    result = JwtAuthenticator(JwtKeySet.from_secret(SECRET)).authenticate(token, WALL)
    assert result == AuthFailure("invalid token")


# -- keys: loading and rotation ---------------------------------------------------------


def test_jwks_rotation_by_replace_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = JwtAuthenticator(JwtKeySet.from_jwks(_jwks(_jwk(rsa_key, "2025"))), algorithms=["RS256"])
    old_token = jwt.encode(_claims(aud=None), rsa_key, "RS256", headers={"kid": "2025"})
    new_token = jwt.encode(_claims(aud=None), new_key, "RS256", headers={"kid": "2026"})
    assert isinstance(auth.authenticate(old_token, WALL), Identity)
    assert auth.authenticate(new_token, WALL) == AuthFailure("unknown key id")
    # The issuer publishes the new key beside the old one, then retires the old one.
    auth.replace_keys(parse_jwks(_jwks(_jwk(rsa_key, "2025"), _jwk(new_key, "2026"))))
    assert isinstance(auth.authenticate(old_token, WALL), Identity)
    assert isinstance(auth.authenticate(new_token, WALL), Identity)
    auth.replace_keys(parse_jwks(_jwks(_jwk(new_key, "2026"))))
    assert auth.authenticate(old_token, WALL) == AuthFailure("unknown key id")
    assert isinstance(auth.authenticate(new_token, WALL), Identity)
    # A replacement that cannot verify the allowed algorithms is refused; the keys stay.
    ec_only = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="no configured key"):
        auth.replace_keys(JwtKeySet.from_pem(_pem(ec_only)))
    with pytest.raises(ValueError, match="need a public key"):
        auth.replace_keys(JwtKeySet.from_secret(SECRET))
    assert isinstance(auth.authenticate(new_token, WALL), Identity)


def test_jwks_parsing_skips_what_is_not_for_signatures_and_refuses_what_is_dangerous(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    sig = _jwk(rsa_key, "sig")
    keys = parse_jwks(
        _jwks(
            sig,
            _jwk(rsa_key, "enc", use="enc"),
            _jwk(rsa_key, "pinned", alg="RS512"),
            _jwk(rsa_key, "for-es", alg="ES256"),
            {"kty": "XYZ", "kid": "unknown-type"},
        )
    )
    assert {k.kid: k.algorithms for k in keys.keys} == {
        "sig": {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
        "pinned": {"RS512"},
    }


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ("not json", "not valid JSON"),
        ("{}", '"keys" array'),
        ('{"keys": ["x"]}', "key 0 is not an object"),
        ("private", "private key material"),
        (_jwks({"kty": "oct", "k": _b64(b"k" * 32)}), "symmetric key"),
        ("duplicate", "duplicate key id"),
        ("only enc", "no usable signing key"),
        (_jwks({"kty": "RSA", "n": "!!", "e": "AQAB"}), "not a valid RSA public key"),
        ("kid 3", "kid that is not a string"),
    ],
)
def test_a_bad_jwks_is_refused_with_a_reason(
    document: str, match: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    sig = _jwk(rsa_key, "sig")
    documents = {
        "private": _jwks({**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key)), "kid": "p"}),
        "duplicate": _jwks(sig, sig),
        "only enc": _jwks(_jwk(rsa_key, "enc", use="enc")),
        "kid 3": _jwks({**sig, "kid": 3}),
    }
    with pytest.raises(ValueError, match=match):
        parse_jwks(documents.get(document, document))


def test_key_material_that_is_too_weak_or_of_the_wrong_kind_is_refused(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        JwtKeySet.from_secret("short")
    with pytest.raises(ValueError, match="PEM key"):
        JwtKeySet.from_secret(_pem(rsa_key))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="2048"):
        JwtKeySet.from_pem(_pem(weak))
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="private key is not accepted"):
        JwtKeySet.from_pem(private_pem)
    k1 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(ValueError, match="unsupported elliptic curve"):
        JwtKeySet.from_pem(_pem(k1))
    with pytest.raises(ValueError, match="need a public key"):
        JwtAuthenticator(JwtKeySet.from_secret(SECRET), algorithms=["RS256"])
    with pytest.raises(ValueError, match="unsupported JWT algorithms"):
        JwtAuthenticator(JwtKeySet.from_secret(SECRET), algorithms=["HS1"])
    with pytest.raises(ValueError, match="no configured key"):
        JwtAuthenticator(JwtKeySet.from_secret("k" * 32), algorithms=["HS512"])


def test_authenticator_options_are_checked(rsa_key: rsa.RSAPrivateKey) -> None:
    keys = JwtKeySet.from_secret(SECRET)
    for bad in ({"leeway": -1.0}, {"leeway": float("nan")}, {"user_claim": ""}, {"audience": []}):
        with pytest.raises(ValueError):  # noqa: PT011 - one message per option
            JwtAuthenticator(keys, **bad)  # type: ignore[arg-type]
    secret, public = keys.keys[0], JwtKeySet.from_pem(_pem(rsa_key)).keys[0]
    with pytest.raises(ValueError, match="not both"):
        JwtKeySet((secret, public))
    with pytest.raises(ValueError, match="no usable signing key"):
        JwtKeySet(())
    x25519 = x25519_key.X25519PrivateKey.generate()  # key agreement, not signatures
    with pytest.raises(ValueError, match="unsupported key type"):
        JwtKeySet.from_pem(_pem(x25519))
    assert JwtAuthenticator(keys).keys is keys


def test_a_certificate_pem_gives_its_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.example")])
    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(rsa_key, hashes.SHA256())
    )
    keys = JwtKeySet.from_pem(cert.public_bytes(serialization.Encoding.PEM))
    token = jwt.encode(_claims(aud=None), rsa_key, "RS256")
    assert isinstance(JwtAuthenticator(keys).authenticate(token, WALL), Identity)


# -- expiry while connected and in-band refresh (scripted time) --------------------------


def _connected(ttl: int) -> tuple[Hub, JwtAuthenticator, ServerConnection, WSConnection]:
    # A long heartbeat, so that only the token decides when the connection ends.
    hub = Hub(Settings(heartbeat_interval=1_000, heartbeat_timeout=2_000))
    auth = JwtAuthenticator(JwtKeySet.from_secret(SECRET))
    token = make_dev_token(SECRET, "user_1", ttl, WALL)
    conn, client, data = _upgrade(hub, auth, token)
    assert _messages(client, data)[0]["data"] == {"success": True, "userId": "user_1"}
    return hub, auth, conn, client


def _refresh(
    conn: ServerConnection,
    client: WSConnection,
    auth: JwtAuthenticator,
    token: str,
    now: float,
) -> dict[str, Any]:
    wall = WALL + now
    conn.receive_data(
        client.send(TextMessage(data=json.dumps({"type": "auth", "data": {"token": token}}))),
        now,
        wall,
    )
    (event,) = conn.events_received()
    assert isinstance(event, AuthRequested)
    assert event.refresh
    conn.complete_auth(auth.authenticate(event.token, wall), now, wall)
    (message,) = _messages(client, conn.data_to_send())
    assert message["type"] == "auth"
    return message["data"]  # type: ignore[no-any-return]


def _close_code(conn: ServerConnection, client: WSConnection) -> tuple[int, str]:
    client.receive_data(conn.data_to_send())
    closes = [e for e in client.events() if isinstance(e, CloseConnection)]
    assert len(closes) == 1
    return closes[0].code, closes[0].reason or ""


def test_without_a_refresh_the_connection_closes_with_4001_at_exp() -> None:
    hub, _, conn, client = _connected(ttl=60)
    assert conn.next_deadline() == 60.0
    conn.handle_timer(59.999, WALL + 59.999)
    assert not conn.closed
    assert conn.data_to_send() == b""
    conn.handle_timer(60.0, WALL + 60.0)
    assert _close_code(conn, client) == (4001, "token expired")
    assert hub.authenticated_clients_count() == 0


def test_a_refresh_before_exp_keeps_the_connection_until_the_new_exp() -> None:
    _, auth, conn, client = _connected(ttl=60)
    fresh = make_dev_token(SECRET, "user_1", 120, WALL + 50)  # exp = WALL + 170
    assert _refresh(conn, client, auth, fresh, now=50.0) == {"success": True, "userId": "user_1"}
    assert conn.next_deadline() == 170.0
    conn.handle_timer(60.0, WALL + 60.0)
    conn.handle_timer(169.0, WALL + 169.0)
    assert not conn.closed
    conn.handle_timer(170.0, WALL + 170.0)
    assert _close_code(conn, client) == (4001, "token expired")


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (make_dev_token(SECRET, "user_2", 600, WALL), "Token is for another user"),
        (make_dev_token(SECRET, "user_1", 10, WALL), "token expired"),
        (make_dev_token("x" * 32, "user_1", 600, WALL), "invalid signature"),
        ("garbage", "malformed token"),
    ],
)
def test_a_refused_refresh_keeps_the_old_expiry(token: str, error: str) -> None:
    _, auth, conn, client = _connected(ttl=60)
    assert _refresh(conn, client, auth, token, now=30.0) == {"success": False, "error": error}
    assert conn.next_deadline() == 60.0
    conn.handle_timer(60.0, WALL + 60.0)
    code, reason = _close_code(conn, client)
    assert (code, reason) == (4001, "token expired")
    assert token[:16] not in reason


# -- the dev token command's core --------------------------------------------------------


def test_make_dev_token_makes_a_token_the_authenticator_accepts() -> None:
    token = make_dev_token(SECRET, "user_1", 3600, WALL + 0.5, issuer=ISSUER, audience=AUDIENCE)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims == {
        "sub": "user_1",
        "iat": int(WALL),
        "exp": int(WALL) + 3601,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    auth = JwtAuthenticator(JwtKeySet.from_secret(SECRET), issuer=ISSUER, audience=AUDIENCE)
    assert auth.authenticate(token, WALL) == Identity(
        user_id="user_1", expires_at=WALL + 3601, channels=NO_CHANNELS
    )
    long_secret = "k" * 64
    hs512 = make_dev_token(long_secret, "u", 60, WALL, algorithm="HS512")
    assert jwt.get_unverified_header(hs512)["alg"] == "HS512"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"algorithm": "RS256"}, "signed with a secret"),
        ({"algorithm": "HS512"}, "64 bytes"),
        ({"sub": ""}, "sub"),
        ({"ttl": 0}, "ttl"),
        ({"secret": "short"}, "32 bytes"),
    ],
)
def test_make_dev_token_refuses_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"secret": SECRET, "sub": "user_1", "ttl": 60, "wall": WALL}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        make_dev_token(**arguments)


def test_a_subject_with_a_lone_surrogate_is_refused_not_crashing_the_connection() -> None:
    # JSON allows "\ud800"; such a user id has no UTF-8 form for the auth message.
    auth = JwtAuthenticator(JwtKeySet.from_secret(SECRET), issuer=ISSUER, audience=AUDIENCE)
    token = jwt.encode(_claims(sub="user_\ud800"), SECRET, algorithm="HS256")
    data = _auth_message(Hub(Settings()), auth, token)
    assert data == {"success": False, "error": "invalid claim: sub"}
