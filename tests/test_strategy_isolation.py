"""A strategy whose code raises in ``on_bar`` is isolated: that version decides nothing
more, is retired with its traceback journaled once, an active one is rolled back to the
previous active version, and the daemon trades on (it never exits because of strategy
code, and the error-rate trigger does not count it)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import orjson
from pydantic import ConfigDict

from quantshift.domain import Bar, Signal
from quantshift.shadow.cli import read_history
from quantshift.shadow.versions import VersionStatus
from quantshift.strategies.base import Params, StrategyBase, register
from tests.test_http_api import AUTH, call, make_settings, running, wait_until

SYMBOLS = [f"S{i:02d}" for i in range(8)]
FAST = {"ma": "sma", "fast": 2, "slow": 5, "mode": "long_short"}


class FaultyParams(Params):
    model_config = ConfigDict(extra="ignore", frozen=True)  # it runs beside ma_cross's


@register
class Faulty(StrategyBase):
    """A new version with a bug on a path it reaches only later (``broken``)."""

    name = "test_faulty"
    Params = FaultyParams
    broken: ClassVar[bool] = False

    def on_bar(self, bar: Bar) -> Signal | None:
        if Faulty.broken:
            return {"closes": []}["close"][-1]  # type: ignore[no-any-return]
        return None


def control_rows(path: Path) -> list[tuple[str, dict[str, Any], str, dict[str, Any]]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT action, params, actor, result FROM control ORDER BY id"
                          ).fetchall()
    finally:
        db.close()
    return [(a, orjson.loads(p or "{}"), who, orjson.loads(r or "{}")) for a, p, who, r in rows]


def versions(**statuses: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"name": "ma_cross", "params": FAST, "canary_percent": 50, "versions": [
        {"version": v, "status": status, **({"name": name} if name else {})}
        for v, (status, name) in statuses.items()]}]


async def test_a_canary_and_a_shadow_that_raise_are_retired_and_trading_goes_on(
        clean: Path) -> None:
    Faulty.broken = False
    settings = make_settings(clean, symbols=SYMBOLS, strategies=versions(
        v1=("active", ""), v2=("canary", "test_faulty"), v3=("shadow", "test_faulty")))
    async with running(settings) as (d, client):
        engine, vc = d.engine, d.version_control
        assert engine is not None and vc is not None
        await wait_until(lambda: engine.bars >= 3 * len(SYMBOLS))
        assert d.metrics is not None
        errors = d.metrics.errors_total()  # what the error-rate trigger counts
        Faulty.broken = True
        await wait_until(lambda: vc.registry.status("ma_cross", "v3") is VersionStatus.RETIRED
                         and vc.registry.status("ma_cross", "v2") is VersionStatus.RETIRED)
        bars = engine.bars
        await wait_until(lambda: engine.bars > bars + 3 * len(SYMBOLS))  # it trades on
        assert {i.version for i in engine._instances.values()} == {"v1"}  # v2's symbols too
        assert engine.control.state.value == "active" and not d.demoted
        assert sorted(b for _, b in vc.books.books) == ["v1"]  # type: ignore[union-attr]
        code, st = await call(client, "GET", "/status")
        assert code == 200 and st["strategies"][0]["versions"] == {"v1": "active", "v2": "retired",
                                                   "v3": "retired"}
        assert st["strategies"][0]["raised"] == ["v2", "v3"]
        assert d.metrics.errors_total() == errors  # isolated: not the daemon's error
    Faulty.broken = False
    rows = control_rows(settings.ledger_path())
    retired = [(p["version"], who, r) for a, p, who, r in rows if a == "retire"]
    assert [(v, who) for v, who, _ in sorted(retired, key=lambda x: x[0])] == [
        ("v2", "daemon"), ("v3", "daemon")]  # once each, not once per bar or symbol
    for _, _, result in retired:
        assert "KeyError: 'close'" in result["trace"] and "on_bar" in result["trace"]
    history = read_history(settings.ledger_path())
    assert sum(1 for h in history if h["action"] == "retire") == 2


async def test_an_active_version_that_raises_is_rolled_back_at_once(clean: Path) -> None:
    Faulty.broken = False
    settings = make_settings(clean, symbols=SYMBOLS, strategies=versions(
        v1=("active", ""), v2=("shadow", "test_faulty")))
    try:
        async with running(settings) as (d, client):
            engine, vc = d.engine, d.version_control
            assert engine is not None and vc is not None
            await wait_until(lambda: engine.bars >= 2 * len(SYMBOLS))
            code, _ = await call(client, "POST", "/promote", headers=AUTH, json={
                "strategy": "ma_cross", "version": "v2", "force": True})
            assert code == 200 and {i.version for i in engine._instances.values()} == {"v2"}
            Faulty.broken = True  # the promoted version reaches its bug
            await wait_until(lambda: vc.registry.active("ma_cross") == "v1")
            assert vc.registry.status("ma_cross", "v2") is VersionStatus.RETIRED
            signals = engine.counts["signals"]
            await wait_until(lambda: engine.counts["signals"] > signals)  # v1 decides again
            assert {i.version for i in engine._instances.values()} == {"v1"}
            assert not d.demoted and engine.control.state.value == "active"
    finally:
        Faulty.broken = False
    actions = [(a, who) for a, _, who, _ in control_rows(settings.ledger_path())
               if a in ("promote", "rollback", "retire")]
    assert actions[0][0] == "promote" and actions[1:] == [("rollback", "daemon"),
                                                          ("retire", "daemon")]


async def test_a_strategy_with_nothing_to_roll_back_to_stops_alone(clean: Path) -> None:
    Faulty.broken = False
    settings = make_settings(clean, symbols=SYMBOLS, strategies=[
        {"name": "ma_cross", "id": "steady", "params": FAST},
        {"name": "test_faulty", "id": "buggy"}])
    try:
        async with running(settings) as (d, client):
            engine = d.engine
            assert engine is not None
            await wait_until(lambda: engine.bars >= len(SYMBOLS))
            Faulty.broken = True
            await wait_until(lambda: ("buggy", "v1") in engine.failed)
            signals = engine.signal_counts.get(("steady", "v1"), 0)
            await wait_until(lambda: engine.signal_counts.get(("steady", "v1"), 0) > signals)
            assert not d.demoted and d.exit_code in (None, 0)
            code, st = await call(client, "GET", "/status")
            assert code == 200
            buggy = next(s for s in st["strategies"] if s["strategy"] == "buggy")
            assert buggy["raised"] == ["v1"]
    finally:
        Faulty.broken = False
    [(_, params, who, result)] = [r for r in control_rows(settings.ledger_path())
                                  if r[0] == "retire"]
    assert params["strategy"] == "buggy" and who == "daemon" and result["status"] == 409
    assert "no version to roll back to" in result["error"] and "KeyError" in result["trace"]
