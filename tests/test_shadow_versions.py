"""Strategy versions: configuration rules, canary routing, promotion and rollback."""

from __future__ import annotations

from hashlib import sha256
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from quantshift.shadow.merge import merge
from quantshift.shadow.routing import CanaryRouter, canary_bucket, routes_to_canary
from quantshift.shadow.versions import (
    StrategyVersions,
    VersionError,
    VersionRegistry,
    VersionSpec,
    VersionStatus,
    validate_versions,
)

A, C, S, R = (VersionStatus.ACTIVE, VersionStatus.CANARY, VersionStatus.SHADOW,
              VersionStatus.RETIRED)


def entry(**fields: Any) -> StrategyVersions:
    return StrategyVersions.model_validate({"name": "ma_cross", **fields})


def three_versions(**fields: Any) -> StrategyVersions:
    return entry(id="trend", params={"fast": 5, "slow": 15}, canary_percent=30, versions=[
        {"version": "v1", "status": "active"},
        {"version": "v2", "status": "canary", "params": {"fast": 8}},
        {"version": "v3", "status": "shadow", "exits": {"stop_loss": "2%"}},
    ], **fields)


# -- configuration --------------------------------------------------------------------------

def test_an_entry_without_versions_is_one_active_v1_with_its_parameters() -> None:
    e = entry(params={"fast": 3, "slow": 9}, exits={"stop_loss": "2atr"})
    [v] = e.effective_versions()
    assert (v.version, v.status, v.name) == ("v1", A, "ma_cross")
    assert v.params == {"fast": 3, "slow": 9} and v.exits == {"stop_loss": "2atr"}
    assert e.key == "ma_cross"


def test_version_parameters_update_the_entry_parameters() -> None:
    v1, v2, v3 = three_versions().effective_versions()
    assert v1.params == {"fast": 5, "slow": 15} and v1.exits is None
    assert v2.params == {"fast": 8, "slow": 15}
    assert v3.exits == {"stop_loss": "2%"} and v3.name == "ma_cross"


def test_toml_shape_loads() -> None:
    import tomllib

    data = tomllib.loads("""
[[strategies]]
name = "ma_cross"
params = { fast = 5, slow = 15 }
canary_percent = 20
[[strategies.versions]]
version = "v1"
status = "active"
[[strategies.versions]]
version = "v2"
status = "shadow"
params = { slow = 30 }
""")
    e = StrategyVersions.model_validate(data["strategies"][0])
    assert [(v.version, v.status) for v in e.effective_versions()] == [("v1", A), ("v2", S)]
    assert e.canary_percent == 20


def test_two_active_versions_are_refused_naming_the_strategy() -> None:
    with pytest.raises(ValidationError) as info:
        entry(id="trend", versions=[{"version": "v1", "status": "active"},
                                    {"version": "v2", "status": "active"}])
    assert "strategy 'trend'" in str(info.value) and "2 active versions (v1, v2)" in str(info.value)
    # The plain function says the same, as a ValueError the settings turn into exit 78.
    specs = [VersionSpec(version="a", status=A), VersionSpec(version="b", status=A)]
    with pytest.raises(ValueError, match=r"^strategy 'rsi': 2 active versions"):
        validate_versions("rsi", specs)


@pytest.mark.parametrize(("versions", "message"), [
    ([{"version": "v1", "status": "shadow"}, {"version": "v2", "status": "retired"}],
     "no active version"),
    ([{"version": "v1", "status": "active"}, {"version": "v2", "status": "canary"},
      {"version": "v3", "status": "canary"}], "2 canary versions (v2, v3)"),
    ([{"version": "v1", "status": "active"}, {"version": "v1", "status": "shadow"}],
     "version 'v1' is listed twice"),
    ([{"version": "v 1", "status": "active"}], "'v 1' is not a version id"),
])
def test_broken_version_lists_name_the_strategy(versions: list[dict], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        entry(id="trend", versions=versions)
    assert "strategy 'trend'" in str(info.value) and message in str(info.value)


def test_any_number_of_shadows_is_allowed() -> None:
    e = entry(versions=[{"version": "live", "status": "active"}]
              + [{"version": f"s{i}", "status": "shadow"} for i in range(6)])
    assert sum(v.status is S for v in e.effective_versions()) == 6


def test_unknown_fields_and_bad_statuses_are_refused() -> None:
    with pytest.raises(ValidationError):
        entry(versions=[{"version": "v1", "status": "primary"}])
    with pytest.raises(ValidationError):
        entry(versions=[{"version": "v1", "status": "active", "weight": 2}])
    with pytest.raises(ValidationError):
        entry(canary_percent=101)


def test_adaptive_bounds_must_hold_the_percent() -> None:
    with pytest.raises(ValidationError, match="canary_percent 60 is outside"):
        entry(canary_adaptive=True, canary_percent=60, canary_min_percent=5,
              canary_max_percent=50)
    with pytest.raises(ValidationError, match="canary_min_percent 40 is above"):
        entry(canary_adaptive=True, canary_percent=30, canary_min_percent=40,
              canary_max_percent=20)
    assert entry(canary_percent=60).canary_percent == 60  # bounds only bind when adaptive


# -- routing --------------------------------------------------------------------------------

def test_bucket_is_the_documented_sha256_value() -> None:
    # sha256(b"ma_crossAAPL"), written out, as a big-endian integer, mod 100.
    digest = "931ec46cbb53d81dc194b412af3f590ddf5150b126626017b9627a296a7e2a30"
    assert sha256(b"ma_crossAAPL").hexdigest() == digest
    assert int(digest, 16) % 100 == 64
    assert canary_bucket("ma_cross", "AAPL") == 64
    assert canary_bucket("ma_cross", "BTC/USDT") == 24
    assert routes_to_canary("ma_cross", "AAPL", 65) and not routes_to_canary("ma_cross", "AAPL",
                                                                             64)
    assert not routes_to_canary("ma_cross", "AAPL", 0) and routes_to_canary("ma_cross", "AAPL",
                                                                             100)


names = st.text(min_size=1, max_size=24)
percents = st.integers(min_value=0, max_value=100)


@settings(max_examples=300, derandomize=True)
@given(names, names, percents, percents)
def test_raising_the_percent_never_moves_a_symbol_back(strategy: str, symbol: str, p: int,
                                                       q: int) -> None:
    low, high = min(p, q), max(p, q)
    bucket = canary_bucket(strategy, symbol)
    assert 0 <= bucket <= 99 and bucket == canary_bucket(strategy, symbol)
    if routes_to_canary(strategy, symbol, low):
        assert routes_to_canary(strategy, symbol, high)
    router = CanaryRouter()
    assert router.to_canary(strategy, symbol, high) == routes_to_canary(strategy, symbol, high)


@settings(max_examples=15, derandomize=True, deadline=None)
@given(names, st.integers(min_value=1, max_value=99))
def test_the_canary_share_is_close_to_the_percent(strategy: str, percent: int) -> None:
    symbols = [f"SYM{i:05d}" for i in range(10_000)]
    share = len(CanaryRouter().canary_symbols(strategy, symbols, percent)) / len(symbols)
    # Five binomial standard deviations at most (0.025 at 50 %).
    assert abs(share - percent / 100) <= 5 * (0.25 / len(symbols)) ** 0.5


def test_a_percent_outside_0_to_100_is_refused() -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        routes_to_canary("s", "X", 101)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        CanaryRouter().to_canary("s", "X", -1)


# -- run time -------------------------------------------------------------------------------

def test_registry_reports_the_configured_versions() -> None:
    reg = VersionRegistry.from_config([three_versions(), entry(id="plain")])
    assert reg.strategies() == ["trend", "plain"]
    assert (reg.active("trend"), reg.canary("trend"), reg.previous_active("trend")) == \
        ("v1", "v2", None)
    assert [v.version for v in reg.versions("trend", S)] == ["v3"]
    assert reg.spec("trend", "v2").params == {"fast": 8, "slow": 15}
    assert (reg.active("plain"), reg.canary("plain")) == ("v1", None)
    assert reg.canary_percent("trend") == 30


def test_route_sends_the_canary_its_symbols_and_the_rest_to_the_active() -> None:
    reg = VersionRegistry.from_config([three_versions(), entry(id="plain")])
    symbols = [f"S{i:03d}" for i in range(200)]
    for sym in symbols:
        expected = "v2" if routes_to_canary("trend", sym, 30) else "v1"
        assert reg.route("trend", sym) == expected
        assert reg.route("plain", sym) == "v1"  # no canary: everything to the active
    assert 0 < sum(reg.route("trend", s) == "v2" for s in symbols) < 200
    reg.set_canary_percent("trend", 0)
    assert all(reg.route("trend", s) == "v1" for s in symbols)


def test_promote_and_rollback_round_trip() -> None:
    reg = VersionRegistry.from_config([three_versions()])
    change = reg.promote("trend", "v2")
    assert (reg.active("trend"), reg.previous_active("trend")) == ("v2", "v1")
    assert reg.status("trend", "v1") is S and reg.canary("trend") is None
    assert change.before == {"v1": "active", "v2": "canary", "v3": "shadow"}
    assert change.after == {"v1": "shadow", "v2": "active", "v3": "shadow"}
    assert change.action == "promote" and change.to_dict()["active"] == "v2"

    back = reg.rollback("trend")
    assert (reg.active("trend"), reg.previous_active("trend")) == ("v1", "v2")
    assert reg.status("trend", "v2") is S and back.action == "rollback"
    reg.rollback("trend")  # a rollback of the rollback restores the promotion
    assert reg.active("trend") == "v2"
    validate_versions("trend", reg.versions("trend"))


def test_refused_changes_name_the_strategy_and_change_nothing() -> None:
    reg = VersionRegistry.from_config([three_versions()])
    before = reg.to_dict()
    with pytest.raises(VersionError, match="'trend': no previous active version"):
        reg.rollback("trend")
    with pytest.raises(VersionError, match="'trend': version 'v1' is already active"):
        reg.promote("trend", "v1")
    with pytest.raises(VersionError, match="'trend': no version 'v9'"):
        reg.promote("trend", "v9")
    with pytest.raises(VersionError, match="unknown strategy 'nope'"):
        reg.promote("nope", "v1")
    with pytest.raises(VersionError, match="'v2' is already the canary"):
        reg.set_status("trend", "v3", C)
    with pytest.raises(VersionError, match="'v1' is the active version"):
        reg.set_status("trend", "v1", R)
    with pytest.raises(VersionError, match="use promote"):
        reg.set_status("trend", "v3", A)
    reg.set_status("trend", "v3", R)
    with pytest.raises(VersionError, match="'v3' is retired"):
        reg.promote("trend", "v3")
    assert reg.to_dict()["strategies"]["trend"]["versions"][2]["status"] == "retired"
    reg.set_status("trend", "v3", S)
    assert reg.to_dict() == before


def test_to_dict_from_dict_round_trip_through_json() -> None:
    reg = VersionRegistry.from_config([three_versions(), entry(id="plain")])
    reg.promote("trend", "v3")
    reg.set_canary_percent("trend", 45)
    again = VersionRegistry.from_dict(orjson.loads(orjson.dumps(reg.to_dict())))
    assert again.to_dict() == reg.to_dict()
    assert (again.active("trend"), again.previous_active("trend")) == ("v3", "v1")
    assert again.canary_percent("trend") == 45 and again.canary("trend") == "v2"
    assert again.spec("trend", "v3").exits == {"stop_loss": "2%"}
    assert again.rollback("trend").active == "v1"


def test_from_dict_refuses_a_state_that_breaks_the_rules() -> None:
    data = VersionRegistry.from_config([three_versions()]).to_dict()
    data["strategies"]["trend"]["versions"][1]["status"] = "active"
    with pytest.raises(VersionError, match="'trend': 2 active versions"):
        VersionRegistry.from_dict(data)
    with pytest.raises(VersionError, match="format"):
        VersionRegistry.from_dict({"format": 99, "strategies": {}})


def edited(*versions: dict[str, Any], percent: int = 30) -> StrategyVersions:
    """``three_versions`` as the operator edited it: these statuses, maybe more versions."""
    return entry(id="trend", params={"fast": 5, "slow": 15}, canary_percent=percent,
                 versions=list(versions))


def test_a_restart_keeps_the_running_versions_and_says_where_the_file_differs() -> None:
    running = VersionRegistry.from_config([three_versions(), entry(id="plain")])
    running.promote("trend", "v2")  # v2 active, v1 shadow, previous v1
    running.set_canary_percent("trend", 12)
    saved = running.to_dict()

    same, diffs = merge(VersionRegistry.from_config([three_versions(), entry(id="plain")]),
                        saved, "journal")
    assert (same.active("trend"), same.previous_active("trend")) == ("v2", "v1")
    assert same.canary_percent("trend") == 12
    assert +same.activations == {("trend", "v2"): 1, ("plain", "v1"): 1}  # started once
    # The file says what it said: its statuses and share differ from the running ones.
    assert {(d.version, d.what) for d in diffs} == {
        ("v1", "status"), ("v2", "status"), (None, "canary_percent")}
    assert "strategy 'trend': canary_percent is 30 in the configuration and 12 in the " \
           "journal; 12 applies" in [d.line() for d in diffs]

    # The operator edits the file: v3 retired, the share down, a v4 added.
    file = edited({"version": "v1", "status": "active"},
                  {"version": "v2", "status": "canary", "params": {"fast": 8}},
                  {"version": "v3", "status": "retired", "exits": {"stop_loss": "2%"}},
                  {"version": "v4", "status": "shadow", "params": {"slow": 30}}, percent=10)
    journal_wins, diffs = merge(VersionRegistry.from_config([file]), saved, "journal")
    assert journal_wins.active("trend") == "v2"
    assert journal_wins.previous_active("trend") == "v1"  # a version added keeps the history
    assert journal_wins.status("trend", "v3") is VersionStatus.SHADOW
    assert journal_wins.status("trend", "v4") is VersionStatus.SHADOW
    assert journal_wins.canary_percent("trend") == 12
    lines = [d.line() for d in diffs]
    assert "strategy 'trend' version 'v3': status is 'retired' in the configuration and " \
           "'shadow' in the journal; the journal's applies" in lines
    assert "strategy 'trend' version 'v4': the version is 'configured' in the configuration " \
           "and absent in the journal; added as shadow" in lines
    assert "strategy 'plain': the strategy is absent in the configuration and 'present' in " \
           "the journal; not configured: its saved state is dropped" in lines

    config_wins, _ = merge(VersionRegistry.from_config([file]), saved, "config")
    assert config_wins.active("trend") == "v1" and config_wins.canary("trend") == "v2"
    assert config_wins.status("trend", "v3") is VersionStatus.RETIRED
    assert config_wins.canary_percent("trend") == 10
    assert config_wins.previous_active("trend") == "v1"  # the history is the journal's


def test_a_version_added_to_the_file_as_active_joins_as_a_shadow_beside_the_running_one(
        ) -> None:
    running = VersionRegistry.from_config([three_versions()])
    running.promote("trend", "v3")
    file = edited({"version": "v1", "status": "shadow"},
                  {"version": "v2", "status": "canary", "params": {"fast": 8}},
                  {"version": "v3", "status": "shadow", "exits": {"stop_loss": "2%"}},
                  {"version": "v4", "status": "active", "params": {"slow": 30}})
    merged, diffs = merge(VersionRegistry.from_config([file]), running.to_dict(), "journal")
    assert merged.active("trend") == "v3"
    assert merged.status("trend", "v4") is VersionStatus.SHADOW
    assert any(d.version == "v4" and "added as shadow: another version is active" in d.line()
               for d in diffs)


def test_a_version_only_the_journal_knows_is_kept_unless_the_file_wins() -> None:
    running = VersionRegistry.from_config([three_versions()])
    data = running.to_dict()  # as a version added at run time leaves it
    data["strategies"]["trend"]["versions"].append(VersionSpec(
        version="v5", status=VersionStatus.SHADOW, name="ma_cross",
        params={"fast": 4, "slow": 40}).model_dump(mode="json"))
    kept, diffs = merge(VersionRegistry.from_config([three_versions()]), data, "journal")
    assert kept.spec("trend", "v5").params == {"fast": 4, "slow": 40}
    assert [(d.version, d.applied) for d in diffs] == [("v5", "kept (added at run time)")]
    dropped, _ = merge(VersionRegistry.from_config([three_versions()]), data, "config")
    assert [v.version for v in dropped.versions("trend")] == ["v1", "v2", "v3"]


def test_a_saved_state_that_cannot_be_read_leaves_the_file_in_force() -> None:
    config = VersionRegistry.from_config([three_versions()])
    merged, [diff] = merge(config, {"format": 1, "strategies": {"x": {}}}, "journal")
    assert merged is config and "the configuration applies" in diff.line()
