"""Prometheus metrics: the exposition parsed by a real parser matches the engine's state,
the Grafana dashboard only asks for series that exist, and a real Prometheus scrapes a
running daemon."""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

from quantshift.app import build_engine, build_feed, open_journal
from quantshift.control import Halt
from quantshift.daemon import Daemon
from quantshift.domain import Bar
from quantshift.ops.metrics import CONTENT_TYPE, Metrics, veto_label
from quantshift.settings import Settings, StrategySpec

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana" / "quantshift.json"
SYMBOLS = ["AAA", "BBB", "CCC"]
T0 = 1_700_000_000 * 10**9
STEP = 60 * 10**9

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def make_daemon(tmp_path: Path, **overrides: Any) -> Daemon:
    """A daemon with its journal, engine and sim feed wired as startup wires them, without
    the tasks: the test hands the bars to the engine itself, so every figure is exact."""
    fields: dict[str, Any] = {
        "state_dir": tmp_path / "var", "log_dir": tmp_path / "logs", "symbols": SYMBOLS,
        "sim_interval": 0, "sizing": "fixed:10", "risk_max_trades_per_day": 0,
        "strategies": [StrategySpec(name="ma_cross",
                                    params={"fast": 2, "slow": 5, "mode": "long_short"})]}
    settings = Settings(**{**fields, **overrides})
    d = Daemon(settings)
    d.journal = open_journal(settings)
    d.engine = build_engine(settings, d.journal, log_decisions=False)
    d.feed = build_feed(settings, {})
    return d


def run_bars(d: Daemon, rounds: int, start: int = 0) -> None:
    feed, engine = d.feed, d.engine
    assert feed is not None and engine is not None
    for i in range(start, start + rounds):
        for symbol in SYMBOLS:
            bar = feed.next_bar(symbol, T0 + i * STEP)  # type: ignore[attr-defined]
            if feed.validator.accept(bar):
                engine.on_bar(bar)


def scrape(m: Metrics) -> Samples:
    body, content_type = m.render()
    assert content_type == CONTENT_TYPE and content_type.startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Any]:
    made: list[tuple[Daemon, Metrics]] = []

    def make(name: str = "d", **overrides: Any) -> tuple[Daemon, Metrics]:
        d = make_daemon(tmp_path / name, **overrides)
        m = Metrics(d)
        made.append((d, m))
        return d, m

    yield make
    for d, m in made:
        m.close()
        assert d.journal is not None
        d.journal.close()


def test_exposition_matches_the_engine(daemons: Any) -> None:
    d, m = daemons()
    run_bars(d, 60)
    engine = d.engine
    pf = engine.portfolio
    c = engine.counts
    assert c["fills"] > 0 and any(pf.net.values())  # the run traded and holds something
    s = scrape(m)
    assert value(s, "quantshift_bars_total") == engine.bars == 60 * len(SYMBOLS)
    assert value(s, "quantshift_feed_bars_accepted_total", feed="sim") == engine.bars
    assert math.isclose(value(s, "quantshift_equity"), pf.equity, rel_tol=1e-12)
    assert math.isclose(value(s, "quantshift_cash"), pf.cash, rel_tol=1e-12)
    assert value(s, "quantshift_drawdown_ratio") == pytest.approx(pf.drawdown)
    assert value(s, "quantshift_pnl", kind="realized") == pytest.approx(pf.realized_pnl)
    assert value(s, "quantshift_pnl", kind="unrealized") == pytest.approx(pf.unrealized_pnl())
    positions = series(s, "quantshift_position_quantity")
    assert {dict(k)["symbol"]: v for k, v in positions.items()} == pf.net
    assert value(s, "quantshift_signals_total", strategy="ma_cross", version="v1") \
        == c["signals"] > 0
    assert value(s, "quantshift_risk_decisions_total", outcome="approved") == c["approved"]
    assert value(s, "quantshift_orders_total", executor="paper") == c["orders"]
    # Paper fills at the bar's close: every order sent has reached its final state.
    assert value(s, "quantshift_orders_final_total", executor="paper", state="filled") \
        == c["orders"]
    assert value(s, "quantshift_fills_total") == c["fills"]
    assert value(s, "quantshift_trades_total") == c["trades"]
    assert value(s, "quantshift_phase", phase="dry_run") == 1
    assert value(s, "quantshift_phase", phase="production") == 0
    assert value(s, "quantshift_trading_state", state="active") == 1
    assert value(s, "quantshift_trading_state", state="halted") == 0
    assert value(s, "quantshift_info", bot="equity", executor="paper") == 1
    assert value(s, "quantshift_canary_percent", strategy="ma_cross") == 0
    assert value(s, "quantshift_shadow_decisions_total", strategy="ma_cross", version="v1") == 0
    assert value(s, "quantshift_version_activations_total", strategy="ma_cross",
                 version="v1") == 1
    assert value(s, "quantshift_feed_stale", feed="sim") == 0
    assert value(s, "quantshift_feed_staleness_seconds", feed="sim") >= 0


def test_decision_latency_histogram_counts_every_bar(daemons: Any) -> None:
    d, m = daemons()
    run_bars(d, 40)
    s = scrape(m)
    bars = d.engine.bars
    assert value(s, "quantshift_decision_latency_seconds_count") == bars
    buckets = sorted(((float(dict(k)["le"]), v) for k, v in
                      series(s, "quantshift_decision_latency_seconds_bucket").items()))
    bounds = [b for b, _ in buckets]
    assert bounds[0] == pytest.approx(10e-6) and bounds[-2] == pytest.approx(1.0)
    assert math.isinf(bounds[-1]) and buckets[-1][1] == bars
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)  # cumulative
    total = value(s, "quantshift_decision_latency_seconds_sum")
    assert 0 < total == pytest.approx(d.engine.latency_sum_ns / 1e9)
    run_bars(d, 5, start=40)
    assert value(scrape(m), "quantshift_decision_latency_seconds_count") == bars + 15


def test_a_forced_veto_shows_its_reason(daemons: Any) -> None:
    d, m = daemons()
    run_bars(d, 10)
    assert series(scrape(m), "quantshift_risk_vetoes_total") == {}
    d.engine.control.apply(Halt(reason="operator test"))
    run_bars(d, 30, start=10)
    vetoed = d.engine.counts["vetoed"]
    assert vetoed > 0
    s = scrape(m)
    assert series(s, "quantshift_risk_vetoes_total") == {(("reason", "halted"),): vetoed}
    assert value(s, "quantshift_risk_decisions_total", outcome="vetoed") == vetoed
    assert value(s, "quantshift_trading_state", state="halted") == 1
    assert value(s, "quantshift_trading_state", state="active") == 0


def test_a_limit_veto_is_labelled_by_its_fixed_phrase(daemons: Any) -> None:
    # 10 shares of a ~100 stock are ~1,000 of notional: every entry is over this limit.
    d, m = daemons(risk_max_position_notional=50)
    run_bars(d, 40)
    reasons = {dict(k)["reason"]: v
               for k, v in series(scrape(m), "quantshift_risk_vetoes_total").items()}
    assert reasons == {"max position notional": d.engine.counts["vetoed"]}
    assert d.engine.counts["vetoed"] > 0


@pytest.mark.parametrize(("text", "label"), [
    ("halted: kill switch: operator", "halted"),
    ("size rounds to zero (fixed:10 at 5.2)", "size rounds to zero"),
    ("cooldown after a losing exit in AAPL: 30s of 60s left", "cooldown after a losing exit"),
    ("no ATR yet for BTC/USDT: the ATR is 0, nothing to size by", "no ATR yet"),
    ("max exposure: 12000.00 > 10000 (capital ramp: 25% on day 1)", "max exposure"),
    ("regime crisis: size x0, no entries in this regime", "regime crisis"),
])
def test_veto_labels_drop_the_details(text: str, label: str) -> None:
    assert veto_label(text.partition(":")[0]) == label == veto_label(text)


def test_rejected_bars_are_counted_by_reason(daemons: Any) -> None:
    d, m = daemons()
    run_bars(d, 3)
    accept = d.feed.validator.accept
    assert not accept(Bar("AAA", T0 + 10 * STEP, math.nan, 1.0, 1.0, 1.0, 1.0))
    assert not accept(Bar("AAA", T0, 100.0, 101.0, 99.0, 100.0, 5.0))  # out of order
    assert not accept(Bar("BBB", T0 + 2 * STEP, 100.0, 101.0, 99.0, 100.0, 5.0))  # again
    rejected = {dict(k)["reason"]: v
                for k, v in series(scrape(m), "quantshift_bars_rejected_total").items()}
    assert rejected == {"NaN value": 1, "out-of-order timestamp": 1, "duplicate timestamp": 1}


def test_error_records_are_counted_by_component(daemons: Any) -> None:
    _, m = daemons()
    logger.error("first failure")
    logger.opt(exception=ValueError("x")).error("second failure")
    logger.warning("not an error")
    assert series(scrape(m), "quantshift_errors_total") == {
        (("component", "tests.test_metrics"),): 2}
    m.close()
    logger.error("after close")
    assert value(scrape(m), "quantshift_errors_total", component="tests.test_metrics") == 2


def test_an_error_with_a_rule_of_its_own_is_counted_but_not_by_the_trigger(
        daemons: Any) -> None:
    _, m = daemons()
    logger.error("a broker call failed")
    logger.bind(alert="error", ruled=True).error("shared store unreachable")
    assert value(scrape(m), "quantshift_errors_total", component="tests.test_metrics") == 2
    assert m.errors_total() == 1  # the error-rate trigger's count: the outage has its rule
    m.close()


def test_two_daemons_in_one_process_keep_their_own_series(daemons: Any) -> None:
    a, ma = daemons("a")
    b, mb = daemons("b")
    run_bars(a, 20)
    run_bars(b, 7)
    assert value(scrape(ma), "quantshift_bars_total") == 60
    assert value(scrape(mb), "quantshift_bars_total") == 21
    assert ma.registry is not mb.registry


def test_version_registry_and_activations(daemons: Any) -> None:
    from quantshift.shadow import StrategyVersions, VersionRegistry

    d, m = daemons()
    run_bars(d, 5)
    assert value(scrape(m), "quantshift_version_activations_total", strategy="ma_cross",
                 version="v1") == 1
    registry = VersionRegistry.from_config([StrategyVersions.model_validate({
        "name": "ma_cross", "canary_percent": 20,
        "versions": [{"version": "v1", "status": "active"},
                     {"version": "v2", "status": "canary"},
                     {"version": "v3", "status": "shadow"}]})])
    d.versions = registry  # type: ignore[attr-defined]
    s = scrape(m)
    assert value(s, "quantshift_canary_percent", strategy="ma_cross") == 20
    assert value(s, "quantshift_strategy_version", strategy="ma_cross", version="v2",
                 status="canary") == 1
    assert value(s, "quantshift_shadow_decisions_total", strategy="ma_cross",
                 version="v3") == 0
    registry.promote("ma_cross", "v2")
    s = scrape(m)
    assert value(s, "quantshift_version_activations_total", strategy="ma_cross",
                 version="v1") == 1
    assert value(s, "quantshift_version_activations_total", strategy="ma_cross",
                 version="v2") == 1
    assert value(s, "quantshift_strategy_version", strategy="ma_cross", version="v2",
                 status="active") == 1
    registry.rollback("ma_cross")
    assert value(scrape(m), "quantshift_version_activations_total", strategy="ma_cross",
                 version="v1") == 2
    registry.promote("ma_cross", "v2")  # two changes between two scrapes count as two
    registry.rollback("ma_cross")
    s = scrape(m)
    assert value(s, "quantshift_version_activations_total", strategy="ma_cross",
                 version="v2") == 2
    assert value(s, "quantshift_version_activations_total", strategy="ma_cross",
                 version="v1") == 3


def test_version_books_count_shadow_decisions(tmp_path: Path) -> None:
    from quantshift.shadow.runtime import VersionControl

    versions = StrategySpec.model_validate({
        "name": "ma_cross", "params": {"fast": 2, "slow": 5, "mode": "long_short"},
        "versions": [{"version": "v1", "status": "active"},
                     {"version": "v2", "status": "shadow", "params": {"fast": 3}}]})
    d = make_daemon(tmp_path, strategies=[versions])
    vc = VersionControl(d.settings, d.engine, d.journal)
    d.versions = vc.registry
    m = Metrics(d)
    try:
        run_bars(d, 40)
        s = scrape(m)
        assert vc.books is not None
        for version in ("v1", "v2"):
            book = vc.books.get("ma_cross", version)
            assert book is not None
            n = value(s, "quantshift_shadow_decisions_total", strategy="ma_cross",
                      version=version)
            assert n == book.engine.counts["signals"] > 0
        assert value(s, "quantshift_strategy_version", strategy="ma_cross", version="v2",
                     status="shadow") == 1
        # The real book trades v1 only: its signals carry that version.
        assert value(s, "quantshift_signals_total", strategy="ma_cross", version="v1") \
            == d.engine.counts["signals"] > 0
        assert ("quantshift_signals_total", (("strategy", "ma_cross"), ("version", "v2"))) \
            not in s
    finally:
        m.close()
        vc.books.close()
        d.journal.close()


# -- the Grafana dashboard ---------------------------------------------------------------
def _exposed_names(daemons: Any) -> set[str]:
    d, m = daemons("dash", risk_max_open_positions=1)  # trades, and vetoes some entries
    run_bars(d, 40)
    d.feed.validator.accept(Bar("AAA", T0, 1.0, 1.0, 1.0, 1.0, 1.0))  # one rejected bar
    logger.error("one error record")
    assert d.engine.counts["vetoed"] and any(d.engine.portfolio.net.values())
    return {name for name, _ in scrape(m)}


def _panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]


def test_dashboard_only_queries_series_the_daemon_exposes(daemons: Any) -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exposed = _exposed_names(daemons)
    titles: list[str] = []
    queried: set[str] = set()
    for panel in _panels(dash):
        if panel["type"] == "row":
            continue
        titles.append(panel["title"])
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bquantshift_[a-z0-9_]+", target["expr"]))
            assert names, f"{panel['title']}: {target['expr']}"
            missing = names - exposed
            assert not missing, f"{panel['title']} asks for {missing}, not in the exposition"
            queried |= names
    for want in ("Equity", "Drawdown", "P&L", "Signals and vetoes", "Decision latency",
                 "Orders and fills", "Feed staleness", "Phase", "Trading state"):
        assert want in titles
    assert any("histogram_quantile" in t["expr"] and "_bucket" in t["expr"]
               for p in _panels(dash) for t in p.get("targets", []))
    for v in variables.values():  # the variables' own queries too
        q = v.get("definition", "")
        assert set(re.findall(r"\bquantshift_[a-z0-9_]+", q)) <= exposed
    assert {"quantshift_equity", "quantshift_drawdown_ratio", "quantshift_pnl",
            "quantshift_phase", "quantshift_trading_state"} <= queried


# -- a running daemon, scraped over HTTP -------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.headers.get("Content-Type", ""), resp.read()


@pytest.mark.process
def test_daemon_serves_metrics_over_http(daemon: Any) -> None:
    port = _free_port()
    d = daemon(QUANTSHIFT_HTTP_PORT=str(port)).start()
    try:
        d.wait_for(r"http: serving")
        d.wait_for(r"fill buy|fill sell")
        content_type, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert content_type.startswith("text/plain")
        names = {s.name: s for f in text_string_to_metric_families(body.decode())
                 for s in f.samples}
        assert names["quantshift_bars_total"].value > 0
        assert names["quantshift_fills_total"].value > 0
        assert "quantshift_decision_latency_seconds_bucket" in names
    finally:
        code, _ = d.stop()
    assert code == 0


def _prom_query(base: str, query: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    _, body = _get(url)
    payload = json.loads(body)
    assert payload["status"] == "success", payload
    return payload["data"]["result"]


@pytest.mark.process
@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="no prometheus binary (scripts/test installs the Debian package "
                           "when it runs as root with apt-get)")
def test_prometheus_scrapes_the_daemon(daemon: Any, tmp_path: Path) -> None:
    port, prom_port = _free_port(), _free_port()
    d = daemon(QUANTSHIFT_HTTP_PORT=str(port)).start()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: quantshift\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port}']\n")
    prom_log = (tmp_path / "prometheus.log").open("w")
    prom = subprocess.Popen(
        [shutil.which("prometheus") or "prometheus", f"--config.file={config}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=prom_log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        d.wait_for(r"http: serving")
        deadline = time.monotonic() + 45
        bars: list[dict[str, Any]] = []
        up: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                up = _prom_query(base, 'up{job="quantshift"}')
                bars = _prom_query(base, 'quantshift_bars_total{job="quantshift"} > 0')
            except (urllib.error.URLError, ConnectionError):
                pass  # Prometheus is still starting
            if bars:
                break
            time.sleep(0.5)
        assert bars, f"no quantshift_bars_total in Prometheus; up = {up}"
        assert float(up[0]["value"][1]) == 1
        assert bars[0]["metric"]["instance"] == f"127.0.0.1:{port}"
        p99 = _prom_query(base, "histogram_quantile(0.99, sum by (le) "
                                "(quantshift_decision_latency_seconds_bucket))")
        assert p99 and 0 < float(p99[0]["value"][1]) <= 1.0
        phase = _prom_query(base, "quantshift_phase == 1")
        assert [r["metric"]["phase"] for r in phase] == ["dry_run"]
        # Every query of the dashboard is valid PromQL, with Grafana's variables filled in.
        for expr in _dashboard_exprs():
            expr = expr.replace("$__rate_interval", "1m").replace("$job", ".*")
            _prom_query(base, expr.replace("$instance", ".*"))
    finally:
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(5)
        prom_log.close()
        code, _ = d.stop()
    assert code == 0
