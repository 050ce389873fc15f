"""CoolKit long connection (protocols.coolkit.ws): every frame through a session in each state.

Oracle: ``WsSession.receive`` raises only declared errors, whatever the frame and the state.
"""

from __future__ import annotations

from protocols.coolkit import ws
from tests.fuzz._common import DECLARED, NOW_MS

SEEDS = [
    b"pong",
    b"ping",
    b'{"error":0,"apikey":"k","config":{"hb":1,"hbInterval":145},"sequence":"1700000000000"}',
    b'{"error":406,"reason":"Authentication Failed","sequence":"1700000000000"}',
    b'{"action":"update","deviceid":"1000abcdef","apikey":"k","params":{"switch":"on"},"d_seq":3}',
    b'{"action":"sysmsg","deviceid":"1000abcdef","apikey":"k","params":{"online":false}}',
    b'{"error":0,"deviceid":"1000abcdef","sequence":"1700000000001","params":{"switch":"off"}}',
    b'{"error":504,"reason":"timeout"}',
]


def _session(state: str) -> ws.WsSession:
    s = ws.WsSession(version=2, appid="app", at="at", apikey="k")
    if state != "new":
        s.handshake(now_ms=NOW_MS, nonce="abcdefgh")
    if state == "live":
        s.receive(SEEDS[2])
        s.command("update", now_ms=NOW_MS, deviceid="1000abcdef", owner_apikey=None,
                  params={"switch": "on"})
    return s


def one_input(data: bytes) -> None:
    for state in ("handshake", "live"):
        session = _session(state)
        for frame in (data, data.decode("utf-8", "replace")):
            try:
                session.receive(frame)
            except DECLARED:
                pass
