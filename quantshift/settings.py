"""Settings: defaults < config/<bot>.toml < .env < process environment.

Every setting is read from the environment as ``QUANTSHIFT_<NAME>`` unless it has a
name of its own (``SHADOW_MODE``, the brokers' credential names). In the TOML file the
same settings are written by their short lower-case names (``phase = "dry_run"``).
"""

from __future__ import annotations

import os
import re
import tomllib
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from quantshift.domain import PHASE_EXECUTOR, ExecutorKind, Phase
from quantshift.errors import ConfigError
from quantshift.risk.sizing import Sizing
from quantshift.shadow.versions import StrategyVersions

ENV_PREFIX = "QUANTSHIFT_"
# Read when Settings are made, not when the class is, so a test suite can keep its daemons
# off a port that a real daemon on the same machine may hold.
DEFAULT_HTTP_PORT = 8720
_QUIET_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
ALERT_KINDS = ("start", "stop", "fill", "halt", "breaker", "reconcile", "demotion",
               "promotion", "rollback", "error")


_PHASE_ALIASES = {"0": Phase.OBSERVATION, "1": Phase.DRY_RUN, "2": Phase.MICRO_CAPITAL,
                  "3": Phase.PRODUCTION}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", "", "none"}
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,31}$")


def _choices(enum: type[StrEnum]) -> str:
    return "|".join(m.value for m in enum)


# One strategy to run: a registered name, an id (defaults to the name), parameters, exits,
# and optionally versions (active, canary, shadow, retired) with the canary's share.
StrategySpec = StrategyVersions


def _env(name: str, *more: str) -> Any:
    return Field(None, validation_alias=AliasChoices(name, *more))


_toml_file: ContextVar[Path | None] = ContextVar("_toml_file", default=None)
_dotenv_file: ContextVar[Path | None] = ContextVar("_dotenv_file", default=None)


class _TomlSource(PydanticBaseSettingsSource):
    """The bot's TOML file; its path is chosen per load (it depends on the bot)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        path = _toml_file.get()
        return read_toml(path) if path is not None else {}


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("risk", "trigger") and isinstance(value, dict):  # [risk] max_... = 10
            flat.update({f"{key}_{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, populate_by_name=True, extra="ignore", validate_default=True,
    )

    bot: str = "equity"
    phase: Phase = Phase.DRY_RUN
    shadow_mode: ExecutorKind | None = _env("SHADOW_MODE", "shadow_mode")
    live_confirm: str | None = None
    feed: Literal["sim", "replay", "alpaca", "ccxt"] = "sim"
    symbols: Annotated[list[str], NoDecode] = ["SIM-A", "SIM-B", "SIM-C"]
    strategies: list[StrategySpec] = Field(
        default_factory=lambda: [StrategySpec(name="ma_cross")])

    sim_interval: float = Field(1.0, ge=0)
    sim_seed: int = 7
    warmup_bars: int = Field(100, ge=0, le=100_000)
    # Live feeds: the bar length, when a feed counts as stale, how hard to reconnect.
    bar_seconds: int = Field(60, ge=1, le=86_400)
    stale_bars: float = Field(3.0, gt=0)
    reconnect_max_seconds: float = Field(60.0, gt=0)
    market_hours_only: bool = True  # equities: act only while the venue's clock is open
    reconcile_interval: float = Field(60.0, ge=0)  # 0 = only at start
    broker_timeout: float = Field(10.0, gt=0, le=120)
    sim_start_price: float = Field(100.0, gt=0)
    replay_file: Path | None = None
    replay_pace: float = Field(0.0, ge=0)

    state_dir: Path = Path("var")
    log_dir: Path = Path("logs")
    config_dir: Path = Path("config")
    log_json: bool = False
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = "INFO"
    log_rotate_mb: float = Field(20.0, gt=0)
    log_keep: int = Field(5, ge=1)

    paper_cash: float = Field(100_000.0, gt=0)
    paper_slippage_bps: float = Field(5.0, ge=0, le=1000)
    paper_commission_bps: float = Field(0.0, ge=0, le=1000)
    paper_fill: Literal["close", "next_open"] = "close"
    sizing: Annotated[Sizing, NoDecode] = Sizing(kind="fixed", value=10)
    fractional: bool = False

    # Overrides of the phase's risk profile; unset means the profile's value, 0 means no limit.
    risk_max_position_notional: float | None = Field(None, ge=0)
    risk_max_exposure: float | None = Field(None, ge=0)
    risk_max_open_positions: int | None = Field(None, ge=0)
    risk_max_daily_loss: float | None = Field(None, ge=0)
    risk_max_trades_per_day: int | None = Field(None, ge=0)
    risk_max_trades_per_hour: int | None = Field(None, ge=0)  # orders in the last 60 min
    risk_max_drawdown: float | None = Field(None, ge=0)  # money below the peak: entries stop
    risk_loss_cooldown_seconds: float | None = Field(None, ge=0)  # per symbol, after a loss
    risk_min_price: float | None = Field(None, ge=0)
    risk_min_avg_volume: float | None = Field(None, ge=0)  # mean volume of the last 20 bars
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
    snapshot_interval: float = Field(5.0, gt=0)
    flush_interval: float = Field(0.1, gt=0, le=5)
    status_interval: float = Field(60.0, gt=0)

    # The operator's HTTP surface: loopback by default; port 0 turns it off. Control
    # endpoints need the token; without one they are off.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default_factory=lambda: DEFAULT_HTTP_PORT, ge=0, le=65_535)
    api_token: SecretStr | None = None
    quiet_window: str | None = None  # "HH:MM-HH:MM" UTC: restarts are harmless then

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
    shadow_mdd_tolerance: float = Field(1.20, gt=0, validation_alias=AliasChoices(
        "SHADOW_MDD_TOLERANCE", "shadow_mdd_tolerance"))
    shadow_min_trades: int = Field(500, ge=1, validation_alias=AliasChoices(
        "SHADOW_MIN_TRADES", "shadow_min_trades"))
    shadow_alpha: float = Field(0.05, gt=0, lt=1, validation_alias=AliasChoices(
        "SHADOW_ALPHA", "shadow_alpha"))
    # Automatic rollback triggers (shadow/triggers.py): None = the phase's default, 0 = off.
    trigger_daily_loss: float | None = Field(None, ge=0)
    trigger_broker_error_rate: float | None = Field(None, ge=0, le=1)
    trigger_position_mismatch: bool | None = None
    trigger_paper_drawdown: float | None = Field(None, ge=0, le=1)
    trigger_latency_p99_ms: float | None = Field(None, ge=0)
    trigger_error_rate: float | None = Field(None, ge=0, le=1)
    trigger_drawdown: float | None = Field(None, ge=0, le=1)
    trigger_win_rate_drop: float | None = Field(None, ge=0, le=1)
    trigger_crashed_component: bool | None = None
    trigger_min_samples: int | None = Field(None, ge=1)
    trigger_interval: float = Field(10.0, ge=0)  # seconds between checks; 0 = never
    trigger_flatten: bool = False  # a demotion also flattens every position
    canary_check_interval: float = Field(3600.0, gt=0)  # adaptive canaries: how often to ask
    # Which alert kinds go out: "all", or a comma list of start,stop,fill,halt,breaker,
    # reconcile,demotion,promotion,rollback,error.
    alerts: Annotated[list[str], NoDecode] = ["all"]

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        dotenv = DotEnvSettingsSource(settings_cls, env_file=_dotenv_file.get())
        return init_settings, env_settings, dotenv, _TomlSource(settings_cls)

    # -- field parsing -------------------------------------------------------------------
    @field_validator("bot")
    @classmethod
    def _bot(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", v):
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

    @field_validator("quiet_window", mode="before")
    @classmethod
    def _quiet(cls, v: Any) -> Any:
        if v is None or str(v).strip() == "":
            return None
        text = str(v).strip()
        if not _QUIET_RE.match(text) or text[:5] == text[6:]:
            raise ValueError("expected HH:MM-HH:MM (UTC), e.g. 21:00-23:00")
        return text

    @field_validator("feed", "paper_fill", "ccxt_websocket", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return str(v).strip().lower()

    # -- derived -------------------------------------------------------------------------
    @property
    def broker(self) -> str | None:
        """The venue orders go to in sandbox and live: the one the market data comes from."""
        return self.feed if self.feed in ("alpaca", "ccxt") else None

    @property
    def executor(self) -> ExecutorKind:
        """The executor: SHADOW_MODE if set, otherwise the phase's default."""
        return self.shadow_mode or PHASE_EXECUTOR[self.phase]

    def ledger_path(self) -> Path:
        """One SQLite file per bot and executor: paper and live never share a ledger."""
        return self.state_dir / f"{self.bot}-{self.executor.value}.sqlite"

    def secret_values(self) -> list[str]:
        return [s.get_secret_value() for s in (
            self.apca_api_key_id, self.apca_api_secret_key, self.ccxt_api_key, self.ccxt_secret,
            self.ccxt_password, self.telegram_bot_token, self.api_token)
            if s is not None and s.get_secret_value()]


def env_name(field: str) -> str:
    """How the operator spells a setting in the environment."""
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0])
    return ENV_PREFIX + field.upper()


def _field_of(key: str) -> str | None:
    for name, info in Settings.model_fields.items():
        if key == name:
            return name
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and key in alias.choices:
            return name
    return None


def _config_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = err.get("loc", ())
    field = _field_of(str(loc[0])) if loc else None
    setting = env_name(field) if field else ".".join(str(p) for p in loc) or "settings"
    if field == "strategies" and len(loc) > 1:
        setting += "[" + "].".join(str(p) for p in loc[1:]) if len(loc) > 2 else f"[{loc[1]}]"
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    value = err.get("input")
    secret = field is not None and Settings.model_fields[field].annotation in (
        SecretStr, SecretStr | None)
    if value is not None and not isinstance(value, dict | list) and not secret:
        shown = str(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ConfigError(setting, f"{msg} (got {shown!r})")
    return ConfigError(setting, msg)


def _preselect_bot(bot: str | None, dotenv: dict[str, str]) -> str:
    if bot:
        return bot
    return os.environ.get("QUANTSHIFT_BOT") or dotenv.get("QUANTSHIFT_BOT") or "equity"


def _dotenv_path() -> Path:
    return Path(os.environ.get("QUANTSHIFT_ENV_FILE", ".env"))


def load_settings(bot: str | None = None, **overrides: Any) -> Settings:
    """Read the settings of one bot; raise ConfigError naming the first bad setting."""
    settings, _ = load_with_sources(bot, **overrides)
    return settings


def load_with_sources(bot: str | None = None, **overrides: Any) -> tuple[Settings, dict[str, str]]:
    """Settings plus, for each setting, where its value came from."""
    dotenv_path = _dotenv_path()
    dotenv_raw = DotEnvSettingsSource(Settings, env_file=dotenv_path)() if dotenv_path.is_file() \
        else {}
    dotenv_upper = {k.upper(): str(v) for k, v in dotenv_raw.items()}
    name = _preselect_bot(bot, dotenv_upper)
    if bot:
        overrides["bot"] = bot
    config_dir = Path(overrides.get("config_dir") or os.environ.get("QUANTSHIFT_CONFIG_DIR")
                      or dotenv_upper.get("QUANTSHIFT_CONFIG_DIR") or "config")
    toml_path = config_dir / f"{name}.toml"
    t1, t2 = _toml_file.set(toml_path), _dotenv_file.set(dotenv_path if dotenv_path.is_file()
                                                          else None)
    try:
        try:
            settings = Settings(**overrides)
        except ValidationError as exc:
            raise _config_error(exc) from None
        layers = [
            ("environment", EnvSettingsSource(Settings)()),
            (str(dotenv_path), dotenv_raw),
            (str(toml_path), read_toml(toml_path)),
        ]
    finally:
        _toml_file.reset(t1)
        _dotenv_file.reset(t2)
    sources: dict[str, str] = {}
    for field in Settings.model_fields:
        sources[field] = "default"
        if field in overrides:
            sources[field] = "command line"
            continue
        for label, data in layers:
            if any(_field_of(k) == field for k in data):
                sources[field] = label
                break
    _check_strategies(settings)
    return settings, sources


def _check_strategies(settings: Settings) -> None:
    from quantshift.exits import ExitRule  # settings sit above the strategies and exits
    from quantshift.strategies import validate_spec

    keys = [spec.key for spec in settings.strategies]
    if not keys:
        raise ConfigError(env_name("strategies"), "at least one strategy is needed")
    if len(set(keys)) != len(keys):
        raise ConfigError(env_name("strategies"), "two strategies share an id; give each an id")
    for i, spec in enumerate(settings.strategies):
        try:
            for version in spec.effective_versions():
                validate_spec(version.name or spec.name, version.params)
                if version.exits is not None:
                    ExitRule(**version.exits)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            message = str(exc).splitlines()
            raise ConfigError(f"{env_name('strategies')}[{i}] ({spec.key})",
                              "; ".join(m.strip() for m in message[:3])) from None


def check_startup(settings: Settings) -> None:
    """Refuse what cannot run yet, and live trading without its confirmation."""
    kind = settings.executor
    if kind is ExecutorKind.LIVE and settings.live_confirm != settings.bot:
        source = "SHADOW_MODE=live" if settings.shadow_mode else f"phase {settings.phase.value}"
        raise ConfigError(
            env_name("live_confirm"),
            f"{source} selects the live executor; set it to the bot's name "
            f"({settings.bot!r}) to confirm real orders, or choose SHADOW_MODE=paper")
    if kind in (ExecutorKind.SANDBOX, ExecutorKind.LIVE) and settings.broker is None:
        source = env_name("shadow_mode") if settings.shadow_mode else env_name("phase")
        raise ConfigError(source, f"the {kind.value} executor needs a broker: no broker "
                                  "configured (set QUANTSHIFT_FEED=alpaca or ccxt with its "
                                  "credentials, or use log_only or paper)")
    uses_alpaca = settings.feed == "alpaca" or (
        settings.broker == "alpaca" and kind in (ExecutorKind.SANDBOX, ExecutorKind.LIVE))
    uses_ccxt = settings.feed == "ccxt" or (
        settings.broker == "ccxt" and kind in (ExecutorKind.SANDBOX, ExecutorKind.LIVE))
    if uses_alpaca:
        for field in ("apca_api_key_id", "apca_api_secret_key"):
            value = getattr(settings, field)
            if value is None or not value.get_secret_value():
                raise ConfigError(env_name(field), "Alpaca needs this credential")
    if uses_ccxt and not settings.ccxt_exchange:
        raise ConfigError(env_name("ccxt_exchange"), "the ccxt exchange id is needed "
                                                     "(e.g. binance)")
    token, chat = settings.telegram_bot_token, settings.telegram_chat_id
    if (token is not None and token.get_secret_value()) and not chat:
        raise ConfigError(env_name("telegram_chat_id"), "TELEGRAM_BOT_TOKEN is set, so alerts "
                                                        "need the chat to send them to")
    if chat and (token is None or not token.get_secret_value()):
        raise ConfigError(env_name("telegram_bot_token"), "TELEGRAM_CHAT_ID is set, so alerts "
                                                          "need the bot's token")
    if settings.feed == "replay" and settings.replay_file is None:
        raise ConfigError(env_name("replay_file"), "QUANTSHIFT_FEED=replay needs a CSV file")
    if settings.feed == "replay" and not settings.replay_file.is_file():  # type: ignore[union-attr]
        raise ConfigError(env_name("replay_file"), f"no such file: {settings.replay_file}")
