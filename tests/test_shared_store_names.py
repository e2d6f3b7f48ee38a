"""One process per instance name (state/shared.py): a second one under the same name is
refused with the setting named. Kept apart from test_shared_store.py: it shortens the
module's claim TTL for its own run."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantshift.errors import ConfigError
from tests.redis_server import RedisServer
from tests.test_shared_store import Instance


async def test_a_second_process_under_one_instance_name_is_refused(
        tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantshift.state import shared

    monkeypatch.setattr(shared, "INSTANCE_TTL_MS", 2_500)  # renewed every second
    a = await Instance(tmp_path, redis_server.url, "twin").start()
    again = Instance(tmp_path / "other", redis_server.url, "twin")
    try:
        with pytest.raises(ConfigError) as err:
            await again.store.open(again.control.adopt)
        assert err.value.setting == "QUANTSHIFT_INSTANCE"
        assert "already running" in err.value.message
    finally:
        await again.stop()
        await a.stop()
    # Once the first has stopped (its name released), the name is free again.
    later = await Instance(tmp_path / "later", redis_server.url, "twin").start()
    assert later.store.duplicate is None
    await later.stop()
