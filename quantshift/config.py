"""Loading the settings and the start-up checks.

Kept apart from the model in ``quantshift/settings.py``: this module reads a bot's settings
from the process environment, the env file and its TOML file (noting where each value came
from), and holds the start-up checks; every failure is a ConfigError naming one setting, so
the daemon exits 78 with a message the operator can act on.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

from dotenv import dotenv_values  # pydantic-settings reads the env file with it too
from pydantic import AliasChoices, SecretStr, ValidationError
from pydantic_settings import DotEnvSettingsSource, EnvSettingsSource, SettingsError

from quantshift.domain import ExecutorKind
from quantshift.endpoints import Why
from quantshift.errors import ConfigError
from quantshift.setting_names import check_env_file, check_environment, check_toml
from quantshift.settings import (
    BOT_NAME,
    DOTENV_FILE,
    ENV_PREFIX,
    TOML_FILE,
    Settings,
    load_toml,
    read_toml,
)


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


def _decode_error(exc: SettingsError, dotenv_path: Path) -> ConfigError:
    """pydantic-settings' "error parsing value for field ... from source ..." as one line;
    the value is not shown (the JSON error says where it breaks)."""
    found = re.search(r'field "(\w+)" from source "(\w+)"', str(exc))
    field, source = found.groups() if found else ("", "")
    where = f" (in {dotenv_path})" if source.startswith("DotEnv") else ""
    cause = exc.__cause__
    detail = f": {cause}" if isinstance(cause, json.JSONDecodeError) else ""
    name = env_name(field) if field in Settings.model_fields else "settings"
    return ConfigError(name, f"not valid JSON{where}{detail}")


def _read_env_file(path: Path) -> dict[str, Any]:
    """The env file's values, once every name in it is known to be a setting."""
    try:
        check_env_file(dotenv_values(path, encoding="utf-8"), path)
        return DotEnvSettingsSource(Settings, env_file=path)()
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not UTF-8 text, so not an env file (named by "
                                     "QUANTSHIFT_ENV_FILE, or .env)") from None
    except SettingsError as exc:
        raise _decode_error(exc, path) from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot be read ({exc.strerror or exc})") from None


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
    # A misspelt name is refused before any value is read: ignored, it would run the bot
    # on a default the operator meant to change.
    check_environment(os.environ)
    dotenv_raw = _read_env_file(dotenv_path) if dotenv_path.is_file() else {}
    dotenv_upper = {k.upper(): str(v) for k, v in dotenv_raw.items()}
    name = _preselect_bot(bot, dotenv_upper)
    if bot:
        overrides["bot"] = bot
    config_dir = Path(overrides.get("config_dir") or os.environ.get("QUANTSHIFT_CONFIG_DIR")
                      or dotenv_upper.get("QUANTSHIFT_CONFIG_DIR") or "config")
    toml_path = config_dir / f"{name}.toml"
    if BOT_NAME.fullmatch(name):  # else no file of it is read: the model names the bad bot
        check_toml(load_toml(toml_path), toml_path)
    t1, t2 = TOML_FILE.set(toml_path), DOTENV_FILE.set(dotenv_path if dotenv_path.is_file()
                                                          else None)
    try:
        try:
            settings = Settings(**overrides)
        except ValidationError as exc:
            raise _config_error(exc) from None
        except SettingsError as exc:  # a JSON setting that is not JSON
            raise _decode_error(exc, dotenv_path) from None
        layers = [
            ("environment", EnvSettingsSource(Settings)()),
            (str(dotenv_path), dotenv_raw),
            (str(toml_path), read_toml(toml_path)),
        ]
    finally:
        TOML_FILE.reset(t1)
        DOTENV_FILE.reset(t2)
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


def _check_exchange(exchange_id: str) -> None:
    """An exchange ccxt does not have is refused before anything dials it."""
    import ccxt.async_support as ccxt  # only here: importing ccxt takes half a second

    if exchange_id not in ccxt.exchanges:
        close = difflib.get_close_matches(exchange_id, ccxt.exchanges, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else " (see ccxt.exchanges)"
        raise ConfigError(env_name("ccxt_exchange"), f"{exchange_id!r} is not an exchange "
                                                     f"of ccxt {ccxt.__version__}{hint}")


def _check_endpoint(settings: Settings, kind: ExecutorKind) -> None:
    """A live executor, or a sandbox whose endpoint is live, needs the confirmation."""
    endpoint = settings.endpoint()
    requested = settings.requested_executor
    url_setting = env_name("apca_api_base_url" if settings.broker == "alpaca"
                           else "ccxt_api_url")
    if requested is ExecutorKind.SANDBOX and endpoint is None and settings.broker == "ccxt" \
            and settings.ccxt_exchange:
        raise ConfigError(env_name("shadow_mode"), f"sandbox, but ccxt knows no sandbox/testnet "
                                                   f"of {settings.ccxt_exchange}: point "
                                                   f"{url_setting} at a paper endpoint, or "
                                                   "use paper")
    if kind is not ExecutorKind.LIVE or settings.live_confirm == settings.bot:
        return
    confirm = f"set it to the bot's name ({settings.bot!r}) to confirm real orders"
    if requested is ExecutorKind.SANDBOX and endpoint is not None:
        # The label said sandbox; the endpoint says otherwise, and the endpoint decides.
        declare = f", or name {endpoint.host} in QUANTSHIFT_ENDPOINT_IS_PAPER if it is " \
                  "one" if endpoint.why is Why.UNKNOWN else ""
        raise ConfigError(env_name("live_confirm"), f"SHADOW_MODE=sandbox, but orders would "
                          f"go to {endpoint.host}, a live endpoint ({endpoint.why.value}); "
                          f"{confirm}, or point {url_setting} at a paper endpoint{declare}")
    source = "SHADOW_MODE=live" if settings.shadow_mode else f"phase {settings.phase.value}"
    where = f" (orders to {endpoint.host}, {endpoint.label})" if endpoint is not None else ""
    raise ConfigError(env_name("live_confirm"), f"{source} selects the live executor{where}; "
                                                f"{confirm}, or choose SHADOW_MODE=paper")


def check_startup(settings: Settings) -> None:
    """Refuse what cannot run yet, and live trading without its confirmation."""
    if settings.feed == "ccxt" and settings.ccxt_exchange:
        _check_exchange(settings.ccxt_exchange)
    kind = settings.executor
    _check_endpoint(settings, kind)
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
    if settings.role != "auto" and settings.redis_url is None:
        raise ConfigError(env_name("role"), f"role {settings.role} needs the account's shared "
                                            "state: set QUANTSHIFT_REDIS_URL")
    if settings.feed == "replay" and settings.replay_file is None:
        raise ConfigError(env_name("replay_file"), "QUANTSHIFT_FEED=replay needs a CSV file")
    if settings.feed == "replay" and not settings.replay_file.is_file():  # type: ignore[union-attr]
        raise ConfigError(env_name("replay_file"), f"no such file: {settings.replay_file}")
