"""JWT key files: rotation by replacing the file (polled) and on SIGHUP, bad files ignored."""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm
from websockets.exceptions import InvalidStatus

from agentcast.adapters.jwt_keyfile import JwtKeyFile

pytestmark = pytest.mark.anyio


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def jwks(**keys):
    """The JWKS document of the public halves of *keys*, by kid."""
    out = []
    for kid, key in keys.items():
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        out.append({**jwk, "kid": kid, "use": "sig", "alg": "ES256"})
    return json.dumps({"keys": out})


def pem(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def token(key, sub, kid=None):
    claims = {"sub": sub, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid} if kid else None)


def replace(path, content):
    """Rotate the way operators should: write a new file, rename it over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text(content) if isinstance(content, str) else fresh.write_bytes(content)
    os.replace(fresh, path)


async def auth_answer(clients, url, tok):
    peer = await clients.connect(f"{url}?token={tok}")
    data = (await peer.recv())["data"]
    await peer.close()
    return data


async def test_a_replaced_jwks_file_is_picked_up(start_server, clients, tmp_path, wait_for, caplog):
    old, new = new_key(), new_key()
    path = tmp_path / "jwks.json"
    path.write_text(jwks(k1=old))
    key_file = JwtKeyFile.open(path, format="jwks", reload_interval=0.05)
    server = await start_server(jwt_key_file=key_file)
    url = server.urls[0]
    old_token, new_token = token(old, "alice", "k1"), token(new, "bob", "k2")
    assert await auth_answer(clients, url, old_token) == {"success": True, "userId": "alice"}
    assert await auth_answer(clients, url, new_token) == {
        "success": False,
        "error": "unknown key id",
    }

    replace(path, jwks(k2=new))
    await wait_for(lambda: key_file.reloads == 1)
    assert await auth_answer(clients, url, new_token) == {"success": True, "userId": "bob"}
    assert await auth_answer(clients, url, old_token) == {
        "success": False,
        "error": "unknown key id",
    }

    # A broken file (half written, wrong format) changes nothing and is logged.
    caplog.set_level(logging.ERROR, logger="agentcast")
    replace(path, '{"keys": [')
    await wait_for(lambda: key_file.failures == 1)
    assert "keeping the current keys: the JWKS is not valid JSON" in caplog.text
    assert await auth_answer(clients, url, new_token) == {"success": True, "userId": "bob"}
    # So does a missing one; the next good version is loaded.
    path.unlink()
    await wait_for(lambda: key_file.failures == 2)
    replace(path, jwks(k1=old, k2=new))
    await wait_for(lambda: key_file.reloads == 2)
    assert await auth_answer(clients, url, old_token) == {"success": True, "userId": "alice"}
    assert key_file.failures == 2  # each problem logged once, not at every poll


async def test_a_public_key_rewritten_in_place_is_picked_up(
    start_server, clients, tmp_path, wait_for
):
    old, new = new_key(), new_key()
    path = tmp_path / "key.pem"
    path.write_bytes(pem(old))
    key_file = JwtKeyFile.open(path, format="pem", reload_interval=0.05)
    server = await start_server(jwt_key_file=key_file)
    url = server.urls[0]
    assert (await auth_answer(clients, url, token(old, "alice")))["success"] is True
    path.write_bytes(pem(new))  # same inode, same size: the modification time tells
    await wait_for(lambda: key_file.reloads == 1)
    assert (await auth_answer(clients, url, token(new, "bob")))["success"] is True
    assert await auth_answer(clients, url, token(old, "alice")) == {
        "success": False,
        "error": "invalid signature",
    }


async def test_a_key_of_another_type_is_refused_on_reload(start_server, tmp_path, wait_for):
    path = tmp_path / "key.pem"
    path.write_bytes(pem(new_key()))
    key_file = JwtKeyFile.open(path, format="pem", reload_interval=0.05, algorithms=["ES256"])
    await start_server(jwt_key_file=key_file)
    before = key_file.authenticator.keys
    replace(path, pem(ed25519.Ed25519PrivateKey.generate()))
    await wait_for(lambda: key_file.failures == 1)
    assert key_file.authenticator.keys is before  # an EdDSA key cannot verify ES256


async def test_sighup_rereads_the_jwks(spawn_server, clients, tmp_path, wait_for):
    old, new = new_key(), new_key()
    path = tmp_path / "jwks.json"
    path.write_text(jwks(k1=old))
    process = await spawn_server(
        "--auth",
        "jwt",
        "--jwt-jwks",
        str(path),
        "--jwt-reload-interval",
        "0",  # no polling: only the signal can reload
        "--require-auth",
    )
    await wait_for(lambda: "JWT authentication with JWKS file" in process.output)
    assert "1 key, algorithms ES256" in process.output
    assert "reloaded on SIGHUP" in process.output
    assert "ANY Origin" in process.output  # no --allowed-origin: it says so
    old_token, new_token = token(old, "alice", "k1"), token(new, "bob", "k2")
    peer = await clients.connect(f"{process.url}?token={old_token}")
    assert (await peer.recv())["data"] == {"success": True, "userId": "alice"}

    replace(path, jwks(k2=new))
    process.process.send_signal(signal.SIGHUP)
    await wait_for(lambda: "reloaded the JWT keys" in process.output)
    peer = await clients.connect(f"{process.url}?token={new_token}")
    assert (await peer.recv())["data"] == {"success": True, "userId": "bob"}
    with pytest.raises(InvalidStatus) as refusal:
        await clients.connect(f"{process.url}?token={old_token}")
    assert refusal.value.response.status_code == 401

    # A bad file on SIGHUP: logged, the keys stay, the server keeps running.
    replace(path, "not a jwks")
    process.process.send_signal(signal.SIGHUP)
    await wait_for(lambda: "keeping the current keys" in process.output)
    peer = await clients.connect(f"{process.url}?token={new_token}")
    assert (await peer.recv())["data"]["success"] is True

    process.process.send_signal(signal.SIGTERM)
    with anyio.fail_after(10):
        assert await process.process.wait() == 0
    for tok in (old_token, new_token):
        assert tok not in process.output
