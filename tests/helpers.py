"""What every test module shares: one ``eventually()`` and one typed recording context.

``eventually`` waits for a condition by polling it on the running loop, and when time runs out
fails with the condition's *name*, never a bare ``TimeoutError``: the failure says what did not
happen. It is the only "wait until" in the suite; the timeout is a safety net, not a measure.

``RecordingContext`` is an ``AccountContext`` (gateway/link.py) that records what a connector
reports instead of feeding a registry: the connector unit tests drive a real connector against
its emulator through it. mypy checks that it satisfies the contract (``_conforms`` below).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import pytest

from gateway.link import LinkState
from gateway.tokens import TokenSlot
from protocols.model import Availability, DeviceEvent, DeviceInfo, Schema, StateChange
from protocols.tsl import normalize

if TYPE_CHECKING:
    from gateway.link import AccountContext

__all__ = [
    "ManualClock",
    "RecordingContext",
    "TlsFiles",
    "emulator",
    "eventually",
    "max_in_any_second",
    "metric_families",
    "metric_value",
    "server_context",
    "throwaway_tls",
]

T = TypeVar("T")


def _describe(predicate: Callable[[], Any]) -> str:
    try:
        source = inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return getattr(predicate, "__name__", repr(predicate))
    return source if len(source) <= 300 else source[:300] + "…"


async def eventually(
    predicate: Callable[[], Any],
    what: str | None = None,
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
) -> Any:
    """Wait until ``predicate()`` is truthy and return its value.

    On timeout fail with ``AssertionError`` naming ``what`` (or the predicate's source). A
    predicate may also be a coroutine function.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(
                f"not within {timeout:g}s: {what or _describe(predicate)}"
            ) from None
        await asyncio.sleep(interval)


def max_in_any_second(times: list[float]) -> int:
    """The most events within any one-second window (rate-limit checks in tests and benches)."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class TlsFiles(NamedTuple):
    """PEM files of a throwaway CA and the certificates it issued for ``127.0.0.1``."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def throwaway_tls(directory: Path) -> TlsFiles:
    """A CA, a server certificate for IP 127.0.0.1 and a client certificate, made with the
    ``openssl`` command; valid for one day. Every TLS test makes its certificates here."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=c2m test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            "-keyout", ca_key, "-out", ca)  # fmt: skip
    issued = []
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        cert, key, csr = (directory / f"{name}.{ext}" for ext in ("pem", "key", "csr"))
        ext = directory / f"{name}.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1\n"
            "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
        )
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=c2m test {name}",
                "-keyout", key, "-out", csr)  # fmt: skip
        openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                "-days", "1", "-extfile", ext, "-out", cert)  # fmt: skip
        issued += [cert, key]
    return TlsFiles(ca, *issued)


def server_context(tls: TlsFiles) -> ssl.SSLContext:
    """A server-side TLS context presenting ``tls``'s server certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.server_cert, tls.server_key)
    return ctx


def metric_families(text: str) -> dict[str, Any]:
    """A ``/metrics`` page's families by name (prometheus-client's own parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def metric_value(fams: dict[str, Any], family: str, sample: str, **labels: str) -> float | None:
    """The value of ``sample`` in ``family`` with ``labels``, or None when there is none."""
    for s in fams[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


class ManualClock:
    """A monotonic clock the test moves by hand: ``clock.now += 10``."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def emulator(make: Callable[[], AbstractAsyncContextManager[T]]) -> Any:
    """A pytest fixture that runs the emulator ``make()`` builds for the length of one test;
    name it by assigning it: ``cloud = emulator(lambda: TencentCloud(devices=4))``."""

    async def fixture() -> AsyncIterator[T]:
        async with make() as running:
            yield running

    return pytest.fixture(fixture)


class RecordingContext:
    """An ``AccountContext`` that records every report, in order, for assertions.

    ``calls`` holds ``(kind, value)`` for every report (``devices``, ``device``, ``state``,
    ``availability``, ``event``); typed views (``states``, ``avail``, ``events``, ``links``,
    ``bad``, ``counts``) make the common assertions short. ``states`` holds the values as the
    connector reported them (raw, as the contract wants); ``normalized()`` and ``flagged()`` show
    what the gateway's ``AccountLink`` makes of them through each device's schema.
    """

    def __init__(self, vendor: str, account: str, tokens: TokenSlot) -> None:
        self.vendor = vendor
        self.account = account
        self.log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(
            logging.getLogger(f"test.{vendor}"), {}
        )
        self.tokens = tokens
        self.calls: list[tuple[str, Any]] = []
        self.listings: list[list[DeviceInfo]] = []
        self.infos: dict[str, DeviceInfo] = {}
        self.states: list[StateChange] = []
        self.avail: list[Availability] = []
        self.events: list[DeviceEvent] = []
        self.links: list[tuple[LinkState, str | None, bool]] = []
        self.token_expiry: int | None = None
        self.bad: list[tuple[str, str | None, str]] = []
        self.counts: dict[str, int] = {}
        self.drains = 0
        self.congested = False  # set True to make the connector hold its reading

    # ---------------------------------------------------------------- the contract

    def devices(self, infos: Iterable[DeviceInfo]) -> None:
        listing = list(infos)
        self.listings.append(listing)
        self.infos = {i.device: i for i in listing}
        self.calls.append(("devices", sorted(i.device for i in listing)))

    def device(self, info: DeviceInfo) -> None:
        self.infos[info.device] = info
        self.calls.append(("device", info))

    def state(self, change: StateChange) -> None:
        self.states.append(change)
        self.calls.append(("state", change))

    def availability(self, av: Availability) -> None:
        self.avail.append(av)
        self.calls.append(("availability", av))

    def event(self, ev: DeviceEvent) -> None:
        self.events.append(ev)
        self.calls.append(("event", ev))

    def link(
        self,
        state: LinkState,
        error: str | None = None,
        *,
        token_expires_ms: int | None = None,
    ) -> None:
        self.links.append((state, error, state is LinkState.ATTENTION))
        if token_expires_ms is not None:
            self.token_expiry = token_expires_ms

    def bad_input(
        self, reason: str, device: str | None = None, counter: str = "bad_frames"
    ) -> None:
        self.bad.append((reason, device, counter))
        self.count(counter)

    def count(self, counter: str, n: int = 1) -> None:
        self.counts[counter] = self.counts.get(counter, 0) + n

    def api_call(self, endpoint: str, n: int = 1) -> None:
        self.count(f"api_calls:{endpoint}", n)

    def schema(self, device: str) -> Schema | None:
        info = self.infos.get(device)
        return info.schema if info else None

    def known_devices(self) -> Sequence[str]:
        return list(self.infos)

    async def drain(self) -> None:
        self.drains += 1
        while self.congested:
            await asyncio.sleep(0.01)

    # ---------------------------------------------------------------- for assertions

    @property
    def link_state(self) -> LinkState | None:
        return self.links[-1][0] if self.links else None

    def mark(self) -> int:
        return len(self.calls)

    def since(self, mark: int, kind: str | None = None) -> list[tuple[str, Any]]:
        return [c for c in self.calls[mark:] if kind is None or c[0] == kind]

    def latest(self, device: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for change in self.states:
            if change.device == device:
                merged.update(change.props)
        return merged

    def _normalized(self, change: StateChange) -> tuple[dict[str, Any], list[str]]:
        schema = self.schema(change.device)
        return normalize(schema, change.props) if schema else (dict(change.props), [])

    def normalized(self, device: str) -> dict[str, Any]:
        """``latest(device)`` normalized as the link does: the values the gateway publishes."""
        merged: dict[str, Any] = {}
        for change in self.states:
            if change.device == device:
                merged.update(self._normalized(change)[0])
        return merged

    def flagged(self) -> list[tuple[str, str]]:
        """``(device, property)`` for every reported value the link would flag as a misfit."""
        return [(c.device, pid) for c in self.states for pid in self._normalized(c)[1]]

    async def until(
        self, predicate: Callable[[], Any], what: str | None = None, timeout: float = 10
    ) -> Any:
        return await eventually(predicate, what, timeout=timeout)


if TYPE_CHECKING:

    def _conforms(ctx: RecordingContext) -> AccountContext:
        return ctx  # mypy proves the recorder satisfies the connectors' contract
