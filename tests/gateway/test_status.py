"""``cloud2mqtt status``: a subprocess reads the bridge topics of a gateway running in-process."""

from __future__ import annotations

import asyncio
import sys

from gateway.instances import merge_health
from gateway.status import Snapshot, ago, render_plain
from tests.dummy_connector import DummyConnector


async def status(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "status", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_once_prints_the_accounts_of_a_running_gateway(gateway_factory, mosquitto, probe):
    gw = await gateway_factory(
        [
            {"vendor": "dummy", "name": "kitchen", "devices": ["lamp/1", "lamp-2"]},
            {"vendor": "dummy", "name": "garage", "devices": ["door"]},
        ],
        connectors={"dummy": DummyConnector},
    )
    await probe.wait_for(
        "cloud2mqtt/bridge/accounts",
        lambda p: sorted((a["state"], a["devices"]) for a in p) == [("online", 1), ("online", 2)],
    )
    assert len(gw.registry) == 3
    rc, out, err = await status("--once", "--broker", mosquitto.url, "--timeout", "10")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["VENDOR", "NAME", "STATE", "SINCE", "DEVICES", "LAST", "ERROR"]
    rows = {line.split()[1]: line.split() for line in lines[1:-1]}
    assert rows["kitchen"][:3] == ["dummy", "kitchen", "online"] and rows["kitchen"][-1] == "2"
    assert rows["garage"][-1] == "1"
    assert "accounts 2/2 online" in lines[-1] and "devices 3" in lines[-1]


async def test_status_once_fails_in_one_line_without_a_gateway(mosquitto):
    rc, out, err = await status("--once", "--broker", mosquitto.url, "--timeout", "0.5")
    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "no gateway answered" in err


def test_plain_rendering_and_ages() -> None:
    snap = Snapshot("cloud2mqtt")
    snap.values = {
        "state": {"state": "online"},
        "accounts": [{"vendor": "xky", "name": "a", "state": "attention", "attention": True,
                      "since": 1, "devices": 0, "error": "credentials refused"}],
    }  # fmt: skip
    import io

    buf = io.StringIO()
    render_plain(snap, buf)
    text = buf.getvalue()
    assert "attention !" in text and "credentials refused" in text and "1 need attention" in text
    assert ago(0) == "-" and ago(1000, 66_000) == "1m 05s" and ago(1, 1 + 90_000_000) == "1d 1h"


def test_a_cluster_shows_which_instance_runs_each_account() -> None:
    snap = Snapshot("cloud2mqtt")
    snap.values = {
        "state": {"state": "online"},
        "accounts": [{"vendor": "tencent", "name": "a", "state": "online", "instance": "gw-a"},
                     {"vendor": "tencent", "name": "b", "state": "online", "instance": "gw-b"}],
        "info": {"cluster": {"live": ["gw-a", "gw-b"]}},
    }  # fmt: skip
    import io

    buf = io.StringIO()
    render_plain(snap, buf)
    header, row_a, row_b, totals = buf.getvalue().splitlines()
    assert header.split()[-1] == "INSTANCE"
    assert row_a.split()[-1] == "gw-a" and row_b.split()[-1] == "gw-b"
    assert "cluster 2 instance(s)" in totals


def test_a_clusters_totals_come_from_the_merged_health() -> None:
    """In cluster mode ``bridge/health`` is the live instances' sum: the published rate is the
    cluster's, and the instances it counted are named with their uptimes."""
    snap = Snapshot("cloud2mqtt")
    snap.values = {
        "state": {"state": "online"},
        "accounts": [{"vendor": "tencent", "name": "a", "state": "online", "instance": "gw-a"}],
        "health": merge_health({
            "gw-a": {"uptime_s": 65, "rates": {"published_per_s": 2.5}, "instance": "gw-a"},
            "gw-b": {"uptime_s": 3, "rates": {"published_per_s": 1.0}, "instance": "gw-b"},
        }),
        "info": {"cluster": {"live": ["gw-b"]}},  # the last writer's view, one round behind
    }  # fmt: skip
    import io

    buf = io.StringIO()
    render_plain(snap, buf)
    totals = buf.getvalue().splitlines()[-1]
    assert "published 3.5/s" in totals
    assert "cluster 2 instance(s): gw-a up 1m 05s, gw-b up 3s" in totals
