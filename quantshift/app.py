"""Wiring: turn Settings into a journal, an engine with its executor, and a feed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from quantshift.clients import reveal
from quantshift.control import ControlPlane
from quantshift.domain import ExecutorKind, Phase
from quantshift.endpoints import describe, executor_kind
from quantshift.engine import Engine
from quantshift.execution import make_executor
from quantshift.execution.venues.base import Venue
from quantshift.exits import ExitManager, ExitRule
from quantshift.feeds.base import Feed
from quantshift.feeds.replay import ReplayFeed
from quantshift.feeds.sim import SimFeed
from quantshift.portfolio import Portfolio
from quantshift.risk.gate import RiskGate
from quantshift.risk.profiles import RiskLimits, limits_for
from quantshift.settings import Settings, StrategySpec
from quantshift.state.journal import Journal
from quantshift.strategies import factory

if TYPE_CHECKING:
    from quantshift.execution.venues.alpaca import AlpacaVenue
    from quantshift.execution.venues.ccxt import CcxtVenue
    from quantshift.state.shared import AccountStore


def risk_limits(settings: Settings) -> RiskLimits:
    return limits_for(settings.phase, {f.name: getattr(settings, f"risk_{f.name}")
                                       for f in fields(RiskLimits)})


def open_journal(settings: Settings, path: Path | None = None,
                 executor: ExecutorKind | None = None, durable: bool = True,
                 fresh: bool = False) -> Journal:
    """The ledger, locked for this process; raises ``LedgerError`` (one line) when it is
    not a QuantShift ledger of this bot and executor, or another process holds it."""
    kind = executor or settings.executor
    return Journal(path or settings.ledger_path(), bot=settings.bot, executor=kind.value,
                   durable=durable, fresh=fresh)


def make_venue(settings: Settings, kind: ExecutorKind) -> Venue:
    """The broker adapter: Sandbox and Live differ only in endpoint and credentials. The
    endpoint decides which of them it is (a sandbox at a live endpoint is live)."""
    endpoint = settings.endpoint(kind)
    kind = executor_kind(kind, endpoint)
    sandbox = kind is ExecutorKind.SANDBOX
    venue: AlpacaVenue | CcxtVenue
    if settings.broker == "alpaca":
        from quantshift.execution.venues.alpaca import AlpacaVenue

        venue = AlpacaVenue(reveal(settings.apca_api_key_id),
                            reveal(settings.apca_api_secret_key), paper=sandbox,
                            base_url=settings.apca_api_base_url, timeout=settings.broker_timeout)
    elif settings.broker == "ccxt":
        from quantshift.execution.venues.ccxt import CcxtVenue

        venue = CcxtVenue(settings.ccxt_exchange or "", key=reveal(settings.ccxt_api_key),
                          secret=reveal(settings.ccxt_secret),
                          password=reveal(settings.ccxt_password) or None,
                          api_url=settings.ccxt_api_url, sandbox=sandbox,
                          timeout=settings.broker_timeout, websocket=settings.ccxt_websocket)
    else:
        raise ValueError("no broker configured")
    if endpoint is not None:  # the start-up line and /status say which class and why
        venue.endpoint_label = describe(kind, endpoint)
    return venue


def build_engine(settings: Settings, journal: Journal, *, executor: ExecutorKind | None = None,
                 strategies: list[StrategySpec] | None = None, log_decisions: bool = True,
                 keep_trades: bool = False,
                 durable: Callable[[], Awaitable[object]] | None = None) -> Engine:
    # The engine's control plane: its trading state, persisted in this journal, is what the
    # gate reads and what every order leaving the process is asked about.
    control = ControlPlane(journal)
    gate = RiskGate(settings.bot, risk_limits(settings), settings.sizing, settings.fractional,
                    regime_symbol=settings.risk_regime_symbol or settings.symbols[0],
                    control=control)
    makers = [factory(spec.name, spec.key, spec.params)
              for spec in (strategies or settings.strategies)]
    specs = strategies or settings.strategies
    rules = {spec.key: ExitRule(**spec.exits) for spec in specs if spec.exits}
    engine = Engine(strategies=makers, gate=gate, portfolio=Portfolio(settings.paper_cash),
                    journal=journal, log_decisions=log_decisions, keep_trades=keep_trades,
                    exits=ExitManager(rules) if rules else None)
    kind = executor or settings.executor
    kind = executor_kind(kind, settings.endpoint(kind))  # the endpoint's, not the label's
    venue = make_venue(settings, kind) if kind in (ExecutorKind.SANDBOX, ExecutorKind.LIVE) \
        else None
    control.install(make_executor(
        kind, engine, paper_fill=settings.paper_fill, slippage_bps=settings.paper_slippage_bps,
        commission_bps=settings.paper_commission_bps, venue=venue, durable=durable,
        permit=control.refusal, clear=control.clearance if settings.redis_url else None,
        timeout=settings.broker_timeout))
    control.settle_timeout = settings.broker_timeout + 1.0
    return engine


def build_feed(settings: Settings, start_prices: dict[str, float],
               account: AccountStore | None = None) -> Feed:
    if settings.feed == "alpaca":
        from quantshift.feeds.alpaca import AlpacaFeed

        if account is not None:  # one websocket per Alpaca account: its instances share it
            from quantshift.feeds.shared import SharedFeed

            return SharedFeed(lambda last: AlpacaFeed.from_settings(settings).resume_after(last),
                              account, settings.bot, settings.lease_ttl)
        return AlpacaFeed.from_settings(settings)
    if settings.feed == "ccxt":
        from quantshift.feeds.ccxt import CcxtFeed

        return CcxtFeed.from_settings(settings)
    if settings.feed == "replay":
        assert settings.replay_file is not None  # check_startup made sure
        return ReplayFeed(settings.replay_file, settings.replay_pace)
    return SimFeed(settings.symbols, settings.sim_interval, settings.sim_seed,
                   start_prices=start_prices, start_price=settings.sim_start_price,
                   batch=1 if settings.sim_interval > 0 else 4)


def open_account(settings: Settings, journal: Journal | None) -> AccountStore:
    """The link to the account's shared state (QUANTSHIFT_REDIS_URL). Only an instance
    whose orders reach the broker counts against the account's caps."""
    from quantshift.state.shared import AccountStore, Caps  # redis only where it is used

    assert settings.redis_url is not None
    limits = risk_limits(settings)
    caps = Caps(limits.max_trades_per_day, limits.max_trades_per_hour, limits.max_daily_loss,
                limits.max_exposure)
    return AccountStore(settings.redis_url.get_secret_value(), settings.account_name,
                        settings.instance_name, caps,
                        sends=settings.executor in (ExecutorKind.SANDBOX, ExecutorKind.LIVE),
                        live=settings.phase in (Phase.MICRO_CAPITAL, Phase.PRODUCTION),
                        grace=settings.redis_grace, journal=journal)
