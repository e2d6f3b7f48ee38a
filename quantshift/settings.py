"""Settings: defaults < config/<bot>.toml < .env < process environment.

Every setting is read from the environment as ``QUANTSHIFT_<NAME>`` unless it has a
name of its own (``SHADOW_MODE``, the brokers' credential names). In the TOML file the
same settings are written by their short lower-case names (``phase = "dry_run"``).
Loading them (and the start-up checks) lives in ``quantshift/config.py``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from quantshift.clients import ALPACA_LIVE_URL, ALPACA_PAPER_URL, ccxt_hosts
from quantshift.domain import PHASE_EXECUTOR, ExecutorKind, Phase
from quantshift.endpoints import Endpoint, Why, classify, executor_kind, host_of
from quantshift.errors import ConfigError
from quantshift.risk.sizing import Sizing
from quantshift.shadow.versions import StrategyVersions

ENV_PREFIX = "QUANTSHIFT_"
# Read when Settings are made, not when the class is, so a test suite can keep its daemons
# off a port that a real daemon on the same machine may hold.
DEFAULT_HTTP_PORT = 8720
BOT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_QUIET_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
ALERT_KINDS = ("start", "stop", "fill", "halt", "breaker", "reconcile", "demotion",
               "promotion", "rollback", "lease", "error")


_PHASE_ALIASES = {"0": Phase.OBSERVATION, "1": Phase.DRY_RUN, "2": Phase.MICRO_CAPITAL,
                  "3": Phase.PRODUCTION}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", "", "none"}
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,31}$")
# Upper bounds of the number settings: far past any sensible value yet finite, so that a
# few digits too many are refused instead of overflowing a sum or an SQLite integer.
_MONEY = 1e12
_COUNT = 1_000_000
_DAY = 86_400
_YEAR = 365 * _DAY


_HOST_RE = re.compile(r"[a-z0-9.:-]{1,253}")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _choices(enum: type[StrEnum]) -> str:
    return "|".join(m.value for m in enum)


# One strategy to run: a registered name, an id (defaults to the name), parameters, exits,
# and optionally versions (active, canary, shadow, retired) with the canary's share.
StrategySpec = StrategyVersions


def _env(name: str, *more: str) -> Any:
    return Field(None, validation_alias=AliasChoices(name, *more))


TOML_FILE: ContextVar[Path | None] = ContextVar("toml_file", default=None)
DOTENV_FILE: ContextVar[Path | None] = ContextVar("dotenv_file", default=None)


class _TomlSource(PydanticBaseSettingsSource):
    """The bot's TOML file; its path is chosen per load (it depends on the bot)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        path = TOML_FILE.get()
        return read_toml(path) if path is not None else {}


TOML_TABLES = ("risk", "trigger")  # [risk] max_exposure = 10 is risk_max_exposure


def load_toml(path: Path) -> dict[str, Any]:
    """The bot's TOML file as written (empty when there is none)."""
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:  # tomllib decodes the whole file before it parses
        raise ConfigError(str(path), "not UTF-8 text, so not a TOML file") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot be read ({exc.strerror or exc})") from None


def read_toml(path: Path) -> dict[str, Any]:
    """The bot's TOML file with its tables flattened into the model's field names."""
    flat: dict[str, Any] = {}
    for key, value in load_toml(path).items():
        if key in TOML_TABLES and isinstance(value, dict):
            flat.update({f"{key}_{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, populate_by_name=True, extra="ignore", validate_default=True,
        # inf, nan and 1e309 are no cash, interval or limit; an env file is UTF-8 text.
        allow_inf_nan=False, env_file_encoding="utf-8",
    )

    bot: str = "equity"
    phase: Phase = Phase.DRY_RUN
    shadow_mode: ExecutorKind | None = _env("SHADOW_MODE", "shadow_mode")
    live_confirm: str | None = None
    feed: Literal["sim", "replay", "alpaca", "ccxt"] = "sim"
    symbols: Annotated[list[str], NoDecode] = ["SIM-A", "SIM-B", "SIM-C"]
    strategies: list[StrategySpec] = Field(
        default_factory=lambda: [StrategySpec(name="ma_cross")])

    sim_interval: float = Field(1.0, ge=0, le=_DAY)
    sim_seed: int = Field(7, ge=0, le=2**63 - 1)  # an SQLite integer
    warmup_bars: int = Field(100, ge=0, le=100_000)
    # Live feeds: the bar length, when a feed counts as stale, how hard to reconnect.
    bar_seconds: int = Field(60, ge=1, le=86_400)
    stale_bars: float = Field(3.0, gt=0, le=10_000)
    # Which side's strategy versions run when the file and the journal differ.
    versions_from: Literal["journal", "config"] = "journal"
    late_bars: float = Field(3.0, ge=0, le=10_000)  # no entry on a bar older (0: off)
    reconnect_max_seconds: float = Field(60.0, gt=0, le=_DAY)
    market_hours_only: bool = True  # equities: act only while the venue's clock is open
    reconcile_interval: float = Field(60.0, ge=0, le=_DAY)  # 0 = only at start
    broker_timeout: float = Field(10.0, gt=0, le=120)
    sim_start_price: float = Field(100.0, gt=0, le=1e12)
    replay_file: Path | None = None
    replay_pace: float = Field(0.0, ge=0, le=1e9)

    state_dir: Path = Path("var")
    log_dir: Path = Path("logs")
    config_dir: Path = Path("config")
    log_json: bool = False
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = "INFO"
    log_rotate_mb: float = Field(20.0, gt=0, le=100_000)
    log_keep: int = Field(5, ge=1, le=1000)

    paper_cash: float = Field(100_000.0, gt=0, le=_MONEY)
    paper_slippage_bps: float = Field(5.0, ge=0, le=1000)
    paper_commission_bps: float = Field(0.0, ge=0, le=1000)
    paper_fill: Literal["close", "next_open"] = "close"
    sizing: Annotated[Sizing, NoDecode] = Sizing(kind="fixed", value=10)
    fractional: bool = False

    # Overrides of the phase's risk profile; unset means the profile's value, 0 means no limit.
    risk_max_position_notional: float | None = Field(None, ge=0, le=_MONEY)
    risk_max_exposure: float | None = Field(None, ge=0, le=_MONEY)
    risk_max_open_positions: int | None = Field(None, ge=0, le=_COUNT)
    risk_max_daily_loss: float | None = Field(None, ge=0, le=_MONEY)
    risk_max_trades_per_day: int | None = Field(None, ge=0, le=_COUNT)
    # orders in the last 60 min
    risk_max_trades_per_hour: int | None = Field(None, ge=0, le=_COUNT)
    # money below the peak: entries stop
    risk_max_drawdown: float | None = Field(None, ge=0, le=_MONEY)
    # per symbol, after a loss
    risk_loss_cooldown_seconds: float | None = Field(None, ge=0, le=_YEAR)
    risk_min_price: float | None = Field(None, ge=0, le=1e12)
    # mean volume of the last 20 bars
    risk_min_avg_volume: float | None = Field(None, ge=0, le=1e15)
    risk_htf_factor: int | None = Field(None, ge=0, le=1000)  # higher timeframe, in bars
    risk_htf_sma: int | None = Field(None, ge=1, le=1000)  # its SMA, in higher-tf bars
    risk_max_position_fraction: float | None = Field(None, ge=0, le=1)  # atr/kelly sizes
    risk_regime_bull: float | None = Field(None, ge=0, le=1)  # size multipliers per regime
    risk_regime_bear: float | None = Field(None, ge=0, le=1)
    risk_regime_choppy: float | None = Field(None, ge=0, le=1)
    risk_regime_crisis: float | None = Field(None, ge=0, le=1)
    risk_ramp_start: float | None = Field(None, ge=0, le=1)  # capital share on day 1; 0 = off
    risk_ramp_day_2: int | None = Field(None, ge=1, le=3650)  # days of the phase on which
    risk_ramp_day_3: int | None = Field(None, ge=1, le=3650)  # the share steps up by thirds
    risk_ramp_day_4: int | None = Field(None, ge=1, le=3650)  # (100 % from ramp_day_4)
    risk_regime_symbol: str | None = None  # the regime's reference; unset = the first symbol

    shutdown_timeout: float = Field(10.0, gt=0, le=600)
    cancel_on_shutdown: bool = True
    flatten_on_shutdown: bool = False
    snapshot_interval: float = Field(5.0, gt=0, le=_DAY)
    flush_interval: float = Field(0.1, gt=0, le=5)
    status_interval: float = Field(60.0, gt=0, le=_DAY)

    # The operator's HTTP surface: loopback by default; port 0 turns it off. Control
    # endpoints need the token; without one they are off.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default_factory=lambda: DEFAULT_HTTP_PORT, ge=0, le=65_535)
    api_token: SecretStr | None = None
    quiet_window: str | None = None  # "HH:MM-HH:MM" UTC: restarts are harmless then
    # What keeps the API answerable whatever a client does (quantshift.ops.http_limits).
    http_max_connections: int = Field(512, ge=8, le=65_535)
    http_head_timeout: float = Field(5.0, gt=0, le=300)  # s for a head, again for a body
    http_keepalive_timeout: float = Field(15.0, gt=0, le=3600)  # s an idle connection stays
    http_status_ttl: float = Field(0.05, ge=0, le=10)  # s a built /status answers every ask

    # Several instances of one account (state/shared.py): unset = this process alone.
    redis_url: SecretStr | None = None  # redis://[:password@]host:port/db (a secret)
    account: str | None = None  # the scope bots share; unset = the bot's name
    instance: str | None = None  # this process; unset = <hostname>-<bot>
    redis_grace: float = Field(5.0, ge=0, le=_DAY)  # s live phases trade on without Redis
    compare_against: str | None = None  # an instance whose decisions this one is lined up with
    # Which instance of the bot trades (state/lease.py): auto|primary|standby
    role: Literal["auto", "primary", "standby"] = "auto"
    lease_ttl: float = Field(3.0, ge=1.0, le=60.0)  # s the primary's lease lives unrenewed

    # Broker credentials, read now so that they are masked everywhere; used by the brokers.
    apca_api_key_id: SecretStr | None = _env("APCA_API_KEY_ID", "apca_api_key_id")
    apca_api_secret_key: SecretStr | None = _env("APCA_API_SECRET_KEY", "apca_api_secret_key")
    ccxt_api_key: SecretStr | None = _env("CCXT_API_KEY", "ccxt_api_key")
    ccxt_secret: SecretStr | None = _env("CCXT_SECRET", "ccxt_secret")
    ccxt_password: SecretStr | None = _env("CCXT_PASSWORD", "ccxt_password")
    # Venue endpoints: the brokers' own by default; overridable for an emulator or a proxy.
    apca_api_base_url: str | None = _env("APCA_API_BASE_URL", "apca_api_base_url")
    apca_api_data_url: str | None = _env("APCA_API_DATA_URL", "apca_api_data_url")
    apca_api_stream_url: str | None = _env("APCA_API_STREAM_URL", "apca_api_stream_url")
    alpaca_data_feed: Literal["iex", "sip"] = "iex"
    ccxt_exchange: str | None = _env("CCXT_EXCHANGE", "ccxt_exchange")
    ccxt_api_url: str | None = _env("CCXT_API_URL", "ccxt_api_url")
    # Hosts that are paper endpoints although QuantShift cannot know it (a proxy in front
    # of a sandbox, an emulator on another machine); any other unknown host is live.
    endpoint_is_paper: Annotated[list[str], NoDecode] = []
    # Bars and order updates by ccxt.pro websocket: auto = where the exchange offers them,
    # on = required (exit 78 without), off = REST polling only.
    ccxt_websocket: Literal["auto", "on", "off"] = Field(
        "auto", validation_alias=AliasChoices("CCXT_WEBSOCKET", "ccxt_websocket"))
    # Alerts: Telegram's Bot API; the URL is overridable for a local stand-in or a proxy.
    telegram_bot_token: SecretStr | None = _env("TELEGRAM_BOT_TOKEN", "telegram_bot_token")
    telegram_chat_id: str | None = _env("TELEGRAM_CHAT_ID", "telegram_chat_id")
    telegram_api_url: str | None = Field("https://api.telegram.org",
                                  validation_alias=AliasChoices("TELEGRAM_API_URL",
                                                                "telegram_api_url"))
    # Champion/challenger statistics for promotion (quantshift compare / promote).
    shadow_n_bootstrap: int = Field(10_000, ge=100, le=1_000_000,
                                    validation_alias=AliasChoices("SHADOW_N_BOOTSTRAP",
                                                                  "shadow_n_bootstrap"))
    shadow_mdd_tolerance: float = Field(1.20, gt=0, le=1000, validation_alias=AliasChoices(
        "SHADOW_MDD_TOLERANCE", "shadow_mdd_tolerance"))
    shadow_min_trades: int = Field(500, ge=1, le=_COUNT, validation_alias=AliasChoices(
        "SHADOW_MIN_TRADES", "shadow_min_trades"))
    shadow_alpha: float = Field(0.05, gt=0, lt=1, validation_alias=AliasChoices(
        "SHADOW_ALPHA", "shadow_alpha"))
    # Automatic rollback triggers (shadow/triggers.py): None = the phase's default, 0 = off.
    trigger_daily_loss: float | None = Field(None, ge=0, le=_MONEY)
    trigger_broker_error_rate: float | None = Field(None, ge=0, le=1)
    trigger_position_mismatch: bool | None = None
    trigger_paper_drawdown: float | None = Field(None, ge=0, le=1)
    trigger_latency_p99_ms: float | None = Field(None, ge=0, le=_DAY * 1000)
    trigger_error_rate: float | None = Field(None, ge=0, le=1)
    trigger_drawdown: float | None = Field(None, ge=0, le=1)
    trigger_win_rate_drop: float | None = Field(None, ge=0, le=1)
    trigger_crashed_component: bool | None = None
    trigger_min_samples: int | None = Field(None, ge=1, le=_COUNT)
    trigger_interval: float = Field(10.0, ge=0, le=_DAY)  # seconds between checks; 0 = never
    trigger_flatten: bool = False  # a demotion also flattens every position
    # adaptive canaries: how often to ask
    canary_check_interval: float = Field(3600.0, gt=0, le=_YEAR)
    # Which alert kinds go out: "all", or a comma list of start,stop,fill,halt,breaker,
    # reconcile,demotion,promotion,rollback,error.
    alerts: Annotated[list[str], NoDecode] = ["all"]

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        dotenv = DotEnvSettingsSource(settings_cls, env_file=DOTENV_FILE.get())
        return init_settings, env_settings, dotenv, _TomlSource(settings_cls)

    # -- field parsing -------------------------------------------------------------------
    @field_validator("bot")
    @classmethod
    def _bot(cls, v: str) -> str:
        if not BOT_NAME.fullmatch(v):
            raise ValueError("expected a short lower-case name (a-z, 0-9, '_', '-')")
        return v

    @field_validator("phase", mode="before")
    @classmethod
    def _phase(cls, v: Any) -> Any:
        text = str(v).strip().lower().replace("-", "_")
        if text in _PHASE_ALIASES:
            return _PHASE_ALIASES[text]
        if text in {p.value for p in Phase}:
            return text
        raise ValueError(f"expected one of {_choices(Phase)} (or 0..3)")

    @field_validator("shadow_mode", mode="before")
    @classmethod
    def _shadow(cls, v: Any) -> Any:
        if v is None:
            return None
        text = str(v).strip().lower().replace("-", "_")
        if text in {"true", "yes", "on", "1"}:
            return ExecutorKind.LOG_ONLY
        if text in _FALSE:
            return None
        if text in {k.value for k in ExecutorKind}:
            return text
        raise ValueError(f"expected one of {_choices(ExecutorKind)} (true = log_only)")

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols(cls, v: Any) -> Any:
        items = [s.strip() for s in v.split(",")] if isinstance(v, str) else list(v)
        items = [s for s in items if s]
        if not items:
            raise ValueError("expected a comma-separated list of at least one symbol")
        bad = [s for s in items if not _SYMBOL_RE.match(s)]
        if bad:
            raise ValueError(f"not a symbol: {bad[0]!r}")
        if len(set(items)) != len(items):
            raise ValueError("a symbol is listed twice")
        return items

    @field_validator("alerts", mode="before")
    @classmethod
    def _alerts(cls, v: Any) -> Any:
        items = [s.strip().lower() for s in v.split(",")] if isinstance(v, str) else list(v)
        items = [s for s in items if s] or ["all"]
        bad = [s for s in items if s not in ALERT_KINDS and s not in ("all", "none")]
        if bad:
            raise ValueError(f"unknown alert kind {bad[0]!r}; expected all, none or a comma "
                             f"list of {','.join(ALERT_KINDS)}")
        return items

    @field_validator("risk_regime_symbol", mode="before")
    @classmethod
    def _regime_symbol(cls, v: Any) -> Any:
        if v is None or str(v).strip() == "":
            return None
        if not _SYMBOL_RE.match(str(v).strip()):
            raise ValueError(f"not a symbol: {v!r}")
        return str(v).strip()

    @field_validator("sizing", mode="before")
    @classmethod
    def _sizing(cls, v: Any) -> Any:
        return Sizing.parse(v) if isinstance(v, str) else v

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, v: Any) -> Any:
        return str(v).upper()

    @field_validator("ccxt_exchange", mode="before")
    @classmethod
    def _exchange_id(cls, v: Any) -> Any:
        if v in (None, ""):
            return None
        text = str(v).strip().lower()
        if not re.fullmatch(r"[a-z0-9_]+", text):
            raise ValueError("expected a ccxt exchange id such as binance")
        return text

    @field_validator("apca_api_base_url", "apca_api_data_url", "apca_api_stream_url",
                     "ccxt_api_url", "telegram_api_url", mode="before")
    @classmethod
    def _url(cls, v: Any) -> Any:
        if v in (None, ""):
            return None
        text = str(v).strip().rstrip("/")
        if not re.match(r"^(https?|wss?)://[^\s/]+", text):
            raise ValueError("expected a URL such as https://host[:port]")
        return text

    @field_validator("endpoint_is_paper", mode="before")
    @classmethod
    def _paper_hosts(cls, v: Any) -> Any:
        items = [h.strip() for h in v.split(",")] if isinstance(v, str) else list(v or [])
        hosts = [h.lower().strip("[]").rstrip(".") for h in items if h]
        bad = [h for h in hosts if not _HOST_RE.fullmatch(h) or (":" in h and not _is_ip(h))]
        if bad:
            raise ValueError("expected host names or addresses, comma-separated, without "
                             "scheme or port, e.g. 192.0.2.2")
        return hosts

    @field_validator("http_host", mode="before")
    @classmethod
    def _host(cls, v: Any) -> Any:
        text = str(v).strip()
        if not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", text):
            raise ValueError("expected an IP address or host name such as 127.0.0.1")
        return text

    @field_validator("api_token", mode="before")
    @classmethod
    def _token(cls, v: Any) -> Any:
        text = v.get_secret_value() if isinstance(v, SecretStr) else v
        if text is None or str(text).strip() == "":
            return None
        text = str(text).strip()
        if len(text) < 16 or not text.isprintable() or " " in text:
            raise ValueError("expected at least 16 printable characters without spaces "
                             "(e.g. from `openssl rand -hex 24`)")
        return text

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, v: Any) -> Any:
        text = v.get_secret_value() if isinstance(v, SecretStr) else v
        if text is None or str(text).strip() == "":
            return None
        text = str(text).strip()
        parts = urlsplit(text)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("expected redis://[:password@]host:port/db, rediss://... or "
                             "unix:///path/to/socket")
        try:
            port = parts.port
            db = parts.path.strip("/") if parts.scheme != "unix" else ""
        except ValueError:
            raise ValueError("the port is not a number from 1 to 65535") from None
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("no host: expected redis://host:port/db")
        if port == 0 or (db and not db.isdigit()):
            raise ValueError("expected redis://host:port/db with a port from 1 to 65535 and "
                             "a database number")
        return text

    @field_validator("account", "instance", "compare_against", mode="before")
    @classmethod
    def _scope(cls, v: Any) -> Any:
        if v is None or str(v).strip() == "":
            return None
        text = str(v).strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", text):
            raise ValueError("expected a short name (letters, digits, '_', '.', '-')")
        return text

    @field_validator("quiet_window", mode="before")
    @classmethod
    def _quiet(cls, v: Any) -> Any:
        if v is None or str(v).strip() == "":
            return None
        text = str(v).strip()
        if not _QUIET_RE.match(text) or text[:5] == text[6:]:
            raise ValueError("expected HH:MM-HH:MM (UTC), e.g. 21:00-23:00")
        return text

    @field_validator("feed", "paper_fill", "ccxt_websocket", "role", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return str(v).strip().lower()

    # -- derived -------------------------------------------------------------------------
    @property
    def broker(self) -> str | None:
        """The venue orders go to in sandbox and live: the one the market data comes from."""
        return self.feed if self.feed in ("alpaca", "ccxt") else None

    @property
    def requested_executor(self) -> ExecutorKind:
        """What the operator asked for: SHADOW_MODE if set, otherwise the phase's default."""
        return self.shadow_mode or PHASE_EXECUTOR[self.phase]

    @property
    def executor(self) -> ExecutorKind:
        """The executor that runs: the one asked for, but live when a sandbox's endpoint
        is live (quantshift/endpoints.py); the ledger, the venue and the feed follow it."""
        requested = self.requested_executor
        return executor_kind(requested, self.endpoint(requested))

    def endpoint(self, kind: ExecutorKind | None = None) -> Endpoint | None:
        """Where a broker executor's orders go, classified; None without a broker, or for a
        ccxt sandbox the exchange has none of (check_startup refuses that)."""
        kind = kind or self.requested_executor
        if kind not in (ExecutorKind.SANDBOX, ExecutorKind.LIVE) or self.broker is None:
            return None
        sandbox = kind is ExecutorKind.SANDBOX
        if self.broker == "alpaca":
            url = self.apca_api_base_url or (ALPACA_PAPER_URL if sandbox else ALPACA_LIVE_URL)
            return classify(url, [host_of(ALPACA_LIVE_URL)], [host_of(ALPACA_PAPER_URL)],
                            self.endpoint_is_paper)
        hosts = ccxt_hosts(self.ccxt_exchange or "")
        if self.ccxt_api_url:  # replaces every host of the exchange: it alone decides
            return classify(self.ccxt_api_url, hosts.live, hosts.paper, self.endpoint_is_paper)
        own = hosts.paper_url if sandbox else hosts.live_url  # what set_sandbox_mode picks
        if own is None:
            return None
        return Endpoint(own, host_of(own), sandbox, Why.PAPER_HOST if sandbox else Why.LIVE_HOST)

    @property
    def account_name(self) -> str:
        return self.account or self.bot

    @property
    def instance_name(self) -> str:
        host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
        return self.instance or f"{host}-{self.bot}"

    def ledger_path(self) -> Path:
        """One SQLite file per bot and executor: paper and live never share a ledger."""
        return self.state_dir / f"{self.bot}-{self.executor.value}.sqlite"

    def secret_values(self) -> list[str]:
        return [s.get_secret_value() for s in (
            self.apca_api_key_id, self.apca_api_secret_key, self.ccxt_api_key, self.ccxt_secret,
            self.ccxt_password, self.telegram_bot_token, self.api_token, self.redis_url)
            if s is not None and s.get_secret_value()] + self._redis_password()

    def _redis_password(self) -> list[str]:
        if self.redis_url is None:
            return []
        password = urlsplit(self.redis_url.get_secret_value()).password
        return [password] if password else []
