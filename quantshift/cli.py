"""The ``quantshift`` command: run, replay, config, and the operator's commands that talk
to a running daemon (status, halt, resume, flatten, reduce, safe-to-restart)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from quantshift import __version__
from quantshift.errors import EX_CONFIG, EX_IOERR, EX_UNAVAILABLE, ConfigError

EX_NOPERM = 77  # sysexits.h: the daemon refused the token, or control is off
EX_NOT_RUNNING = 3  # as `systemctl status`: the status came from the state file


def _fail_config(exc: ConfigError) -> int:
    print(f"quantshift: invalid setting {exc.setting}: {exc.message}", file=sys.stderr)
    return EX_CONFIG


def _params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("--param", f"expected KEY=VALUE, got {pair!r}")
        params[key.strip()] = value.strip()
    return params


def _check_dirs(settings: Any) -> None:
    """The state and log directories must be writable before anything starts."""
    import tempfile

    from quantshift.config import env_name

    for field in ("state_dir", "log_dir"):
        path = Path(getattr(settings, field))
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
                pass
        except OSError as exc:
            raise ConfigError(env_name(field), f"{path} is not a writable directory "
                                               f"({exc.strerror or exc})") from None


def cmd_run(args: argparse.Namespace) -> int:
    from quantshift.config import check_startup, env_name, load_settings
    from quantshift.daemon import Daemon
    from quantshift.execution.venues.base import VenueError
    from quantshift.feeds.replay import ReplayFormatError
    from quantshift.ops.http import probe_bind
    from quantshift.ops.logging import setup_logging
    from quantshift.state.ledger import LedgerError

    try:
        settings = load_settings(bot=args.bot)
        check_startup(settings)
        _check_dirs(settings)
        if settings.http_port:  # before the first log line: a port in use is one line
            probe_bind(settings.http_host, settings.http_port)
    except ConfigError as exc:
        return _fail_config(exc)
    setup_logging(bot=settings.bot, log_dir=settings.log_dir, level=settings.log_level,
                  json=settings.log_json, secrets=settings.secret_values(),
                  rotate_mb=settings.log_rotate_mb, keep=settings.log_keep)
    try:
        return Daemon(settings).run()
    except (LedgerError, ReplayFormatError) as exc:
        # Not ours, held by another daemon, or a replay file that is not bars.
        from loguru import logger

        setting = env_name("state_dir" if isinstance(exc, LedgerError) else "replay_file")
        logger.error("start-up failed: invalid setting {}: {}", setting, exc)
        return _fail_config(ConfigError(setting, str(exc)))
    except VenueError as exc:  # unreachable at start-up: systemd retries later
        print(f"quantshift: broker unreachable at start-up: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except (sqlite3.Error, OSError) as exc:  # a full disk: no order may go without its journal
        print(f"quantshift: the journal cannot be written at start-up ({exc}); nothing was "
              "sent", file=sys.stderr)
        return EX_IOERR


def cmd_replay(args: argparse.Namespace) -> int:
    from quantshift.config import load_settings
    from quantshift.feeds.replay import ReplayFormatError
    from quantshift.ops.logging import setup_logging
    from quantshift.replay import print_summary, run_replay, write_trades
    from quantshift.settings import StrategySpec
    from quantshift.state.ledger import LedgerError
    from quantshift.strategies import validate_spec

    try:
        settings = load_settings(bot=args.bot)
        if not args.data.is_file():
            raise ConfigError("--data", f"no such file: {args.data}" if not args.data.exists()
                              else f"not a regular file: {args.data}")
        if args.strategy:
            spec = StrategySpec(name=args.strategy, params=_params(args.param))
            try:
                validate_spec(spec.name, spec.params)
            except ValueError as exc:
                raise ConfigError("--strategy/--param", str(exc)) from None
            strategies = [spec]
        else:
            if args.param:
                raise ConfigError("--param", "needs --strategy")
            strategies = settings.strategies
    except ConfigError as exc:
        return _fail_config(exc)
    setup_logging(bot=f"{settings.bot}-replay", log_dir=settings.log_dir, level="WARNING",
                  secrets=settings.secret_values(), console_level="WARNING")
    journal = args.journal or (
        settings.state_dir / "replay" / f"{settings.bot}-{args.data.stem}.sqlite")
    progress = sys.stderr.isatty() and not args.no_progress
    try:
        summary, trades = run_replay(settings, args.data, strategies, journal_path=journal,
                                     symbol=args.symbol, progress=progress)
    except ReplayFormatError as exc:
        return _fail_config(ConfigError("--data", str(exc)))
    except LedgerError as exc:  # another replay of the file runs, or not a ledger there
        return _fail_config(ConfigError("--journal", str(exc)))
    except OSError as exc:  # the disk, while reading the file or writing the ledger
        _say(f"replay of {args.data} failed: {exc}")
        return EX_IOERR
    if args.trades_out:
        write_trades(args.trades_out, trades)
    if args.json:
        sys.stdout.write(orjson.dumps(summary.as_dict()).decode() + "\n")
    else:
        print_summary(summary)
    return 0


def _show(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "********" if value.get_secret_value() else "(empty)"
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return ",".join(_show(v) if not hasattr(v, "model_dump") else
                        orjson.dumps(v.model_dump(exclude_none=True)).decode() for v in value)
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def cmd_config(args: argparse.Namespace) -> int:
    from quantshift.app import risk_limits
    from quantshift.config import check_startup, env_name, load_with_sources
    from quantshift.endpoints import describe

    try:
        settings, sources = load_with_sources(bot=args.bot)
        check_startup(settings)
    except ConfigError as exc:
        return _fail_config(exc)
    rows = [(env_name(name), _show(getattr(settings, name)), sources[name])
            for name in type(settings).model_fields]
    derived = [("executor", settings.executor.value), ("ledger", str(settings.ledger_path()))]
    endpoint = settings.endpoint()
    if endpoint is not None:  # classified by its host (quantshift/endpoints.py), not by name
        where = describe(settings.executor, endpoint)
        venue = settings.ccxt_exchange if settings.broker == "ccxt" else settings.broker
        derived.append(("orders go to", f"{venue} ({where}) at {endpoint.url}"))
    derived += [(f"risk.{k}", f"{v:g}") for k, v in asdict(risk_limits(settings)).items()]
    if args.json:
        sys.stdout.write(orjson.dumps({
            "settings": {k: {"value": v, "source": s} for k, v, s in rows},
            "derived": dict(derived)}).decode() + "\n")
        return 0
    width = max(len(r[0]) for r in rows)
    vwidth = min(max(len(r[1]) for r in rows), 60)
    print(f"{'setting':<{width}}  {'value':<{vwidth}}  source")
    for key, value, source in rows:
        print(f"{key:<{width}}  {value:<{vwidth}}  {source}")
    print()
    for key, value in derived:
        print(f"{key:<{width}}  {value}")
    return 0


def _say(message: str) -> None:
    print(f"quantshift: {message}", file=sys.stderr)


def _from_state_file(settings: Any, why: str) -> tuple[dict[str, Any] | None, str]:
    from quantshift.ops.statefile import StateFileError, read_state

    try:
        return read_state(settings.ledger_path()), why
    except StateFileError as exc:
        return None, f"{why}; {exc}"


def _fetch_status(settings: Any) -> tuple[dict[str, Any] | None, str]:
    """The status from the running daemon, else from the state file; and a note on why
    the state file was read."""
    from quantshift.ops.client import ApiError, DaemonApi, DaemonDown

    if not settings.http_port:
        return _from_state_file(settings, "QUANTSHIFT_HTTP_PORT is 0, so the daemon serves "
                                          "no HTTP: read from the state file")
    api = DaemonApi(settings)
    try:
        return api.status(), ""
    except DaemonDown:
        return _from_state_file(settings, f"the {settings.bot} daemon is not running "
                                          f"(nothing answers at {api.url})")
    except ApiError as exc:
        return _from_state_file(settings, f"the daemon could not be asked ({exc})")


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from quantshift.config import load_settings
    from quantshift.ops.console import render_status

    settings = load_settings(bot=args.bot)
    status, note = _fetch_status(settings)
    if status is None:
        _say(note)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps({**status, "note": note} if note else status).decode()
                         + "\n")
    else:
        render_status(status, Console(), note)
    return 0 if status["source"] == "daemon" else EX_NOT_RUNNING


def cmd_control(args: argparse.Namespace) -> int:
    from quantshift.config import env_name, load_settings
    from quantshift.ops.client import ApiError, DaemonApi, DaemonDown

    settings = load_settings(bot=args.bot)
    if not settings.http_port:
        raise ConfigError(env_name("http_port"), "is 0: the daemon serves no HTTP, so it "
                                                 "cannot be controlled")
    if settings.api_token is None:
        raise ConfigError(env_name("api_token"), "not set: control needs the daemon's token "
                                                 "(in the environment or the env file)")
    body: dict[str, Any] = {}
    if getattr(args, "reason", None):
        body["reason"] = args.reason
    if getattr(args, "flatten", False):
        body["flatten"] = True
    action = getattr(args, "action", None) or args.command
    path = action.startswith("versions/")  # the version is named by the path
    for key in ("strategy", "version", "to", "status", "percent", "params", "exits"):
        if getattr(args, key, None) is not None and not (path and key in ("strategy",
                                                                          "version")):
            body[key] = getattr(args, key)
    if getattr(args, "strategy_name", None):
        body["name"] = args.strategy_name
    if getattr(args, "force", False):
        body["force"] = True
    api = DaemonApi(settings)
    try:
        code, answer = api.read(f"/{action}") if getattr(args, "method", "") == "GET" \
            else api.control(action, body)
    except DaemonDown:
        _say(f"the {settings.bot} daemon is not running (nothing answers at {api.url})")
        return EX_UNAVAILABLE
    except ApiError as exc:
        _say(str(exc))
        return 1
    if code == 401:
        _say(f"the daemon at {api.url} refused the token (401): QUANTSHIFT_API_TOKEN is "
             "not the daemon's")
        return EX_NOPERM
    if code == 403:
        _say(f"control is off on the daemon at {api.url} (403): it was started without "
             "QUANTSHIFT_API_TOKEN")
        return EX_NOPERM
    if code != 200:
        label = getattr(args, "label", None) or action
        _say(f"{label} refused ({code}): {answer.get('error', 'no reason given')}")
        return 1
    if answer.get("handed_over"):
        held = ", ".join(f"{q:g} {sym}" for sym, q in answer.get("positions", {}).items())
        print(f"{settings.bot}: instance {answer.get('instance')} handed the lease (epoch "
              f"{answer.get('lease_epoch')}) over to "
              f"{'instance ' + answer['to'] if answer.get('to') else 'the first standby'} "
              f"after {answer.get('wait_ms')} ms with nothing in flight; "
              f"{answer.get('open_orders', 0)} open orders and positions "
              f"{held or 'none'} go with it; it is a standby now")
        return 0
    if "change" in answer or "strategies" in answer or "canary_percent" in answer \
            or "added" in answer:
        # the versions' commands
        from quantshift.shadow.cli import describe_versions

        print(describe_versions(settings.bot, answer))
        return 0
    state, reason = answer.get("state"), answer.get("reason")
    line = f"{settings.bot}: trading {state}" + (f" ({reason})" if reason else "")
    line += f", was {answer.get('was')}"
    if "flatten_orders" in answer or "orders" in answer:
        line += f"; {answer.get('flatten_orders', answer.get('orders'))} flattening orders sent"
    if answer.get("durable") is False:
        line += "; NOT yet written to the journal (see the daemon's log)"
    print(line)
    return 0


def cmd_safe_to_restart(args: argparse.Namespace) -> int:
    from quantshift.config import load_settings
    from quantshift.ops.client import ApiError, DaemonApi, DaemonDown
    from quantshift.ops.statefile import StateFileError, read_state
    from quantshift.ops.status import restart_blockers

    settings = load_settings(bot=args.bot)
    status: dict[str, Any] | None = None
    if settings.http_port:
        api = DaemonApi(settings)
        try:
            status = api.status()
            source = f"the running daemon at {api.url}"
        except DaemonDown:
            pass
        except ApiError as exc:  # up but not answering: a restart may well cut something
            print(f"{settings.bot}: not safe to restart: cannot tell ({exc})")
            return 1
    if status is None:
        path = settings.ledger_path()
        if not path.is_file():
            print(f"{settings.bot}: safe to restart: no daemon answers and there is no "
                  f"state file at {path}, so nothing to interrupt")
            return 0
        try:
            status = read_state(path)
        except StateFileError as exc:  # there, but unreadable: nothing says it is safe
            print(f"{settings.bot}: not safe to restart: cannot tell ({exc})")
            return 1
        source = f"the state file {path} " + ("(the daemon is not running)" if settings.http_port
                                               else "(QUANTSHIFT_HTTP_PORT is 0: a running "
                                                    "daemon cannot be asked)")
    blockers = restart_blockers(status, settings.quiet_window)
    if blockers:
        print(f"{settings.bot}: not safe to restart, from {source}: {'; '.join(blockers)}")
        return 1
    print(f"{settings.bot}: safe to restart, from {source}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantshift", description=__doc__)
    parser.add_argument("--version", action="version", version=f"quantshift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--bot", help="bot name (default: QUANTSHIFT_BOT or 'equity')")
    run.set_defaults(func=cmd_run)

    replay = sub.add_parser("replay", help="replay a CSV file through the engine (Paper)")
    replay.add_argument("--bot")
    replay.add_argument("--data", type=Path, required=True, help="CSV: timestamp,open,high,"
                        "low,close,volume[,symbol]")
    replay.add_argument("--strategy", help="strategy name (default: the bot's strategies)")
    replay.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    replay.add_argument("--symbol", help="symbol for a file without a symbol column")
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    replay.add_argument("--trades-out", type=Path, help="write the trade list as CSV")
    replay.add_argument("--journal", type=Path, help="the replay's own ledger file")
    replay.add_argument("--no-progress", action="store_true")
    replay.set_defaults(func=cmd_replay)

    from quantshift.emulators.cli import add_subparser as add_emulate

    add_emulate(sub)

    config = sub.add_parser("config", help="print the effective settings and their sources")
    config.add_argument("--bot")
    config.add_argument("--json", action="store_true")
    config.set_defaults(func=cmd_config)

    status = sub.add_parser("status", help="the bot's status: from the running daemon, or "
                            "from its state file when it is down (exit 3)")
    status.add_argument("--bot")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    halt = sub.add_parser("halt", help="halt trading (persists across restarts); "
                          "open orders are cancelled")
    halt.add_argument("--bot")
    halt.add_argument("--reason", help="why, for the log and the journal")
    halt.add_argument("--flatten", action="store_true", help="also close every position")
    halt.set_defaults(func=cmd_control)
    for name, text in (("resume", "resume trading after a halt or reduce"),
                       ("flatten", "close every position (exits pass even while halted)"),
                       ("reduce", "only exposure-reducing orders from now on")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--bot")
        if name != "resume":
            cmd.add_argument("--reason", help="why, for the log and the journal")
        cmd.set_defaults(func=cmd_control)

    handover = sub.add_parser("handover", help="the primary gives the bot's lease to a "
                              "standby once nothing is in flight; positions and open orders "
                              "go with it (several instances, QUANTSHIFT_REDIS_URL)")
    handover.add_argument("--bot")
    handover.add_argument("--to", metavar="INSTANCE", help="the standby to take over "
                          "(default: the first to try)")
    handover.add_argument("--reason", help="why, for the log and the journal")
    handover.set_defaults(func=cmd_control)

    safe = sub.add_parser("safe-to-restart", help="exit 0 when a restart now cannot hurt "
                          "(no open orders or intents in flight; equities: market closed or "
                          "in QUANTSHIFT_QUIET_WINDOW), else 1 with what is in the way")
    safe.add_argument("--bot")
    safe.set_defaults(func=cmd_safe_to_restart)

    from quantshift.shadow.cli import add_subparsers as add_versions

    add_versions(sub, cmd_control)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _fail_config(exc)
    except KeyboardInterrupt:
        return 130
