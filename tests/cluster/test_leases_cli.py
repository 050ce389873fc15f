"""``cloud2mqtt leases``: the lease bucket read from NATS by a separate process, beside a live
cluster: which instance holds how many slots and runs which configured accounts."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from emulators.tencent import TencentCloud
from tests.cluster.conftest import quick_accounts, toml_config
from tests.helpers import emulator, eventually

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = 8

cloud = emulator(lambda: TencentCloud(devices=1, latency=0.0))


async def leases(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "leases", "-c", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(path: Path, mosquitto: Any, cluster: dict[str, Any] | None, accounts: list[dict[str, Any]]) -> Path:
    tables: dict[str, Any] = {"mqtt": {"url": mosquitto.url}, "accounts": accounts}
    if cluster is not None:
        tables["cluster"] = cluster
    path.write_text(toml_config(tables))
    return path


async def test_leases_shows_who_holds_the_slots_and_runs_each_account(
    instance: Any, nats_server: Any, mosquitto: Any, cloud: TencentCloud, tmp_path: Path
) -> None:
    accounts = quick_accounts(cloud, ACCOUNTS)
    a, b = [await instance(name, accounts) for name in ("gw-a", "gw-b")]
    await eventually(
        lambda: len(a.account_keys()) + len(b.account_keys()) == ACCOUNTS
        and [len(gw.cluster.leases.held()) for gw in (a, b)] == [2, 2],  # type: ignore[union-attr]
        "the 4 slots split 2/2 and every account runs", timeout=20,
    )  # fmt: skip
    config = write_config(tmp_path / "ops.toml", mosquitto,
                          {"nats": nats_server.url, "slots": 4}, accounts)  # fmt: skip

    code, out, err = await leases(config, "--json")
    assert code == 0, err
    view = json.loads(out)
    assert view["slots"] == view["recorded_slots"] == 4
    assert view["live"] == ["gw-a", "gw-b"]
    runs_on = {key: entry["runs_on"] for key, entry in view["accounts"].items()}
    assert runs_on == {f"{v}/{n}": gw.config.cluster.instance_id  # type: ignore[union-attr]
                       for gw in (a, b) for v, n in gw.account_keys()}  # fmt: skip

    code, out, err = await leases(config)
    assert code == 0, err
    lines = out.splitlines()
    assert "4 slots, 2 live instance(s)" in lines[0]
    table = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert lines[1].split() == ["INSTANCE", "LIVE", "EXPIRES", "IN", "SLOTS", "ACCOUNTS"]
    for gw in (a, b):
        live, _, slots, runs = table[gw.config.cluster.instance_id]  # type: ignore[union-attr]
        assert (live, slots, runs) == ("yes", "2", str(len(gw.account_keys())))

    await a.stop()  # a clean stop: its presence goes, gw-b takes its slots
    await eventually(lambda: len(b.cluster.leases.held()) == 4,  # type: ignore[union-attr]
                     "gw-b holds every slot", timeout=20)  # fmt: skip
    code, out, _ = await leases(config, "--json")
    view = json.loads(out)
    assert view["live"] == ["gw-b"] and "gw-a" not in view["instances"]
    assert set(entry["runs_on"] for entry in view["accounts"].values()) == {"gw-b"}


async def test_leases_needs_a_cluster_section_and_reachable_nats(
    mosquitto: Any, nats_server: Any, tmp_path: Path
) -> None:
    accounts: list[dict[str, Any]] = []
    code, _, err = await leases(write_config(tmp_path / "single.toml", mosquitto, None, accounts))
    assert code == 2 and err.count("\n") == 1 and "cluster" in err, err
    url = nats_server.url
    nats_server.kill()
    code, _, err = await leases(write_config(tmp_path / "gone.toml", mosquitto, {"nats": url}, accounts))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "cluster: cannot use NATS" in err or "NATS at" in err, err
