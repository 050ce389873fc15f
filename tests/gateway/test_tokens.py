from __future__ import annotations

import json

from gateway.tokens import TokenStore
from tests.helpers import eventually


def test_atomic_0600_and_reload(tmp_path):
    path = tmp_path / "state" / "tokens.json"
    store = TokenStore(path)
    store.slot("tencent", "a").save({"Token": "t1", "ExpireAt": 5})
    assert path.stat().st_mode & 0o777 == 0o600
    assert TokenStore(path).slot("tencent", "a").load() == {"Token": "t1", "ExpireAt": 5}
    store.slot("tencent", "a").save(None)
    assert TokenStore(path).slot("tencent", "a").load() is None


async def test_a_burst_of_saves_is_one_write(tmp_path):
    path = tmp_path / "tokens.json"
    store = TokenStore(path, min_interval=0.2)
    writes = 0
    real = store._write

    def counting() -> None:
        nonlocal writes
        writes += 1
        real()

    store._write = counting  # type: ignore[method-assign]
    for i in range(1000):
        store.slot("coolkit", f"acc{i}").save({"at": str(i)})
    assert writes == 1  # the first save goes out at once, the rest are coalesced
    await eventually(lambda: writes == 2, "the coalesced write, once min_interval passed")
    assert writes == 2
    assert len(json.loads(path.read_text())) == 1000
    store.slot("coolkit", "late").save({"at": "x"})
    store.flush()  # shutdown never loses a coalesced save
    assert "coolkit/late" in json.loads(path.read_text())


def test_unreadable_file_starts_empty(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text("{broken")
    assert TokenStore(path).slot("x", "y").load() is None
