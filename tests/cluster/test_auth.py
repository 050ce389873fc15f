"""NATS authentication and TLS for ``[cluster]``, against real nats-servers configured for them.

A gateway joins with the right credentials (user and password, a token, either one in the URL,
an nkey seed, a .creds file of a server in operator mode) and over TLS checked against ``tls_ca`` (with a client certificate where the
server asks for one). Wrong or missing credentials, or an untrusted server certificate, stop
the start with one line naming the ``cluster.*`` key to fix; no secret appears in that line,
in any log record, or in ``bridge/info``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import NatsServer, NatsServers
from tests.helpers import eventually, throwaway_tls

B = "cloud2mqtt"
PASSWORD = "Pw-NatsPlanted-1"
TOKEN = "Tok-NatsPlanted-2"
WRONG = "Wrong-NatsPlanted-3"

USERS = f'authorization {{ users = [ {{ user: "gw", password: "{PASSWORD}" }} ] }}'
TOKEN_ONLY = f'authorization {{ token: "{TOKEN}" }}'


def user_nkey(directory: Path, name: str) -> tuple[Path, str]:
    """A new user nkey: the seed file (``nk -gen user`` writes the same) and the public key."""
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path = directory / f"{name}.nk"
    path.write_bytes(seed + b"\n")
    return path, nkeys.from_seed(bytearray(seed)).public_key.decode()


def _jwt(signer: Any, subject: str, kind: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (v2) for ``subject``, signed by the nkey ``signer``, as ``nsc`` makes them."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = b64(json.dumps({
        "jti": b64(os.urandom(16)), "iat": 1_700_000_000, "iss": signer.public_key.decode(),
        "sub": subject, "name": kind, "nats": {**claims, "type": kind, "version": 2},
    }).encode())  # fmt: skip
    return f"{header}.{body}.{b64(signer.sign(f'{header}.{body}'.encode()))}"


def operator_mode(directory: Path) -> tuple[str, Path]:
    """A nats-server configuration in operator mode (an operator, a system account and an
    account with JetStream) and a .creds file of a user of that account."""
    import nkeys

    def pair(prefix: int) -> tuple[bytes, Any]:
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        return seed, nkeys.from_seed(bytearray(seed))

    (_, op), (_, system), (_, account), (user_seed, user) = (
        pair(p) for p in (nkeys.PREFIX_BYTE_OPERATOR, nkeys.PREFIX_BYTE_ACCOUNT,
                          nkeys.PREFIX_BYTE_ACCOUNT, nkeys.PREFIX_BYTE_USER)
    )  # fmt: skip
    unlimited = dict.fromkeys(("subs", "data", "payload", "imports", "exports", "conn", "leaf",
                               "mem_storage", "disk_storage", "streams", "consumer"), -1)  # fmt: skip
    ids = [k.public_key.decode() for k in (op, system, account, user)]
    conf = (
        f'operator: "{_jwt(op, ids[0], "operator", {})}"\nsystem_account: {ids[1]}\n'
        f"resolver: MEMORY\nresolver_preload: {{ {ids[1]}: \"{_jwt(op, ids[1], 'account', {})}\", "
        f'{ids[2]}: "{_jwt(op, ids[2], "account", {"limits": {**unlimited, "wildcards": True}})}" }}\n'
    )
    user_jwt = _jwt(account, ids[3], "user", {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1})
    creds = directory / f"{ids[3][:8]}.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    return conf, creds


def url_with(server: NatsServer, userinfo: str) -> str:
    return f"nats://{userinfo}@{server.host}:{server.port}"


def seen_text(caplog: pytest.LogCaptureFixture, probe: Any = None) -> list[str]:
    """Every log message of the test, and every MQTT payload the probe saw."""
    texts = [r.getMessage() for r in caplog.records]
    texts += [r.exc_text or "" for r in caplog.records]
    if probe is not None:
        texts += [repr(payload) for _, payload, _ in probe.messages]
    return texts


def assert_no_secret(texts: list[str], *secrets: str) -> None:
    for secret in secrets:
        leaks = [t[:200] for t in texts if secret in t]
        assert not leaks, f"{secret!r} leaked: {leaks}"


async def joined(gw: Any) -> None:
    await eventually(
        lambda: gw.cluster.serving() and len(gw.cluster.leases.held()) == 4,
        "the instance joined and holds every slot",
    )


# ------------------------------------------------------------------------ the right credentials


@pytest.mark.parametrize("way", ["user and password", "token", "user:password in the URL",
                                 "token in the URL", "nkey seed", "creds file"])  # fmt: skip
async def test_a_gateway_joins_with_the_right_credentials(
    way: str, nats_servers: NatsServers, instance: Any, probe: Any, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="cloud2mqtt")
    secret = TOKEN if "token" in way else PASSWORD
    if way == "nkey seed":
        seed_file, public = user_nkey(tmp_path, "gw")
        server = await nats_servers.start(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}')
        secret = seed_file.read_text().strip()
        auth: dict[str, Any] = {"nkey_seed": str(seed_file)}
    elif way == "creds file":
        conf, creds = operator_mode(tmp_path)
        server = await nats_servers.start(conf)
        secret = creds.read_text().split("NKEY SEED-----\n")[1].split()[0]
        auth = {"credentials": str(creds)}
    else:
        server = await nats_servers.start(TOKEN_ONLY if "token" in way else USERS)
        auth = {
            "user and password": {"user": "gw", "password": PASSWORD},
            "token": {"token": TOKEN},
            "user:password in the URL": {"nats": url_with(server, f"gw:{PASSWORD}")},
            "token in the URL": {"nats": url_with(server, TOKEN)},
        }[way]
    gw = await instance("gw-a", [], server=server, **auth)
    await joined(gw)
    info = await probe.wait_for(  # its own bridge/info (bridge/info is the cluster's merge)
        f"{B}/bridge/instances/gw-a/info", lambda p: p.get("cluster", {}).get("held") == [0, 1, 2, 3]
    )
    assert any("gw-a joined" in r.getMessage() for r in caplog.records)
    assert "cluster" in info["config"]  # shown, redacted
    assert_no_secret([*seen_text(caplog, probe), repr(gw.config)], secret)


# ------------------------------------------------------------------------ refused


@pytest.mark.parametrize(
    ("conf", "auth", "names"),
    [
        (USERS, {"user": "gw", "password": WRONG}, "check cluster.user and cluster.password"),
        (TOKEN_ONLY, {"token": WRONG}, "check cluster.token"),
        (TOKEN_ONLY, {"url_token": WRONG}, "check the user:password@ (or token@) of cluster.nats"),
        (USERS, {}, "set cluster.user and cluster.password, cluster.token"),
        ("nkey", {}, "check cluster.nkey_seed"),
        ("operator", {}, "check cluster.credentials"),
    ],
    ids=["wrong password", "wrong token", "wrong token in the URL", "none given", "unknown nkey",
         "creds of another operator"],
)  # fmt: skip
async def test_refused_credentials_stop_the_start_with_one_clear_line(
    conf: str, auth: dict[str, Any], names: str, nats_servers: NatsServers, instance: Any,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    from gateway.cluster.node import ClusterUnavailable

    caplog.set_level(logging.DEBUG, logger="cloud2mqtt")
    secrets = [WRONG, PASSWORD, TOKEN]
    if conf == "nkey":
        _, known = user_nkey(tmp_path, "known")
        conf = f'authorization {{ users = [ {{ nkey: "{known}" }} ] }}'
        stranger, _ = user_nkey(tmp_path, "stranger")
        auth = {"nkey_seed": str(stranger)}
        secrets.append(stranger.read_text().strip())
    elif conf == "operator":  # the creds of a user of another operator's account
        conf, _ = operator_mode(tmp_path)
        _, stranger = operator_mode(tmp_path)
        auth = {"credentials": str(stranger)}
        secrets.append(stranger.read_text().split("NKEY SEED-----\n")[1].split()[0])
    server = await nats_servers.start(conf)
    if "url_token" in auth:
        auth = {"nats": url_with(server, auth["url_token"])}
    with pytest.raises(ClusterUnavailable) as refused:
        await instance("gw-a", [], server=server, **auth)
    message = str(refused.value)
    assert message.startswith("cluster: NATS at nats://") and names in message, message
    assert "\n" not in message
    assert_no_secret([message, *seen_text(caplog)], *secrets)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "NATS" in r.getMessage()], \
        "start() reports the cause once, as its error, not as warnings before it"


async def test_cli_refused_token_is_one_line_and_exit_1(
    nats_servers: NatsServers, mosquitto: Any, tmp_path: Path
) -> None:
    """``cloud2mqtt run`` as a user runs it, the token taken from the environment: one line
    on stderr naming cluster.token, no traceback, exit 1, and the token nowhere."""
    server = await nats_servers.start(TOKEN_ONLY)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[mqtt]\nurl = "{mosquitto.url}"\n[gateway]\nstate_dir = "{tmp_path}/state"\n'
        f'[cluster]\nnats = "{server.url}"\ntoken = "${{NATS_TOKEN}}"\n'
    )
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway.cli", "run", "-c", str(config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "NATS_TOKEN": WRONG},
    )  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line or "cluster" in line]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert errors == [f"cloud2mqtt run: cluster: NATS at {server.url} refused the "
                      "authentication; check cluster.token"], proc.stderr  # fmt: skip
    assert WRONG not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------ TLS


@pytest.mark.parametrize("mutual", [False, True], ids=["server certificate", "mutual TLS"])
async def test_tls_joins_with_tls_ca_and_a_client_certificate_where_asked(
    mutual: bool, nats_servers: NatsServers, instance: Any, tmp_path: Path
) -> None:
    """A server with a throwaway CA's certificate: joined with ``tls_ca`` (and, where the
    server verifies clients, ``tls_cert`` + ``tls_key``); without them, one line naming what
    to set."""
    from gateway.cluster.node import ClusterUnavailable

    tls = throwaway_tls(tmp_path / "tls")
    verify = f', ca_file: "{tls.ca}", verify: true' if mutual else ""
    server = await nats_servers.start(
        f'tls {{ cert_file: "{tls.server_cert}", key_file: "{tls.server_key}"{verify} }}'
    )
    # nats:// is upgraded because the server requires TLS; tls:// asks for it in the URL
    url = f"tls://{server.host}:{server.port}" if mutual else server.url
    client = {"tls_cert": str(tls.client_cert), "tls_key": str(tls.client_key)} if mutual else {}
    gw = await instance("gw-a", [], server=server, nats=url, tls_ca=str(tls.ca), **client)
    await joined(gw)
    assert gw.config.cluster is not None and gw.config.cluster.tls is True
    if mutual:  # no client certificate
        lacking, names = {"tls_ca": str(tls.ca)}, r"cluster\.tls_cert and cluster\.tls_key$"
    else:  # the system's CAs do not trust the throwaway one
        lacking, names = {}, r"certificate is not trusted .*check cluster\.tls_ca$"
    with pytest.raises(ClusterUnavailable, match=names):
        await instance("gw-b", [], server=server, nats=url, **lacking)


@pytest.mark.parametrize("token", [False, True], ids=["no credentials", "a token"])
async def test_tls_asked_of_a_server_without_tls_is_refused(
    token: bool, nats_servers: NatsServers, instance: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """nats-py would go on in plain text when the server does not require TLS; a tls:// URL
    means TLS or nothing. The token is refused before nats-py sends it: the server, which
    accepts that token, sees no CONNECT and the join fails."""
    from gateway.cluster.node import ClusterUnavailable

    caplog.set_level(logging.DEBUG, logger="cloud2mqtt")
    server = await nats_servers.start(TOKEN_ONLY if token else "")
    url = f"tls://{server.host}:{server.port}"
    with pytest.raises(ClusterUnavailable, match=r"offers no TLS, and cluster\.tls asks for it"):
        await instance("gw-a", [], server=server, nats=url, **({"token": TOKEN} if token else {}))
    assert_no_secret(seen_text(caplog), TOKEN)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
