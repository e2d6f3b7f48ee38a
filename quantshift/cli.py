"""The ``quantshift`` command: run, replay, config."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from quantshift import __version__
from quantshift.errors import EX_CONFIG, EX_UNAVAILABLE, ConfigError


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

    from quantshift.settings import env_name

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
    from quantshift.daemon import Daemon
    from quantshift.execution.venues.base import VenueError
    from quantshift.ops.logging import setup_logging
    from quantshift.settings import check_startup, load_settings
    from quantshift.state.journal import JournalOwnerError

    try:
        settings = load_settings(bot=args.bot)
        check_startup(settings)
        _check_dirs(settings)
    except ConfigError as exc:
        return _fail_config(exc)
    setup_logging(bot=settings.bot, log_dir=settings.log_dir, level=settings.log_level,
                  json=settings.log_json, secrets=settings.secret_values(),
                  rotate_mb=settings.log_rotate_mb, keep=settings.log_keep)
    try:
        return Daemon(settings).run()
    except JournalOwnerError as exc:
        print(f"quantshift: invalid setting QUANTSHIFT_STATE_DIR: {exc}", file=sys.stderr)
        return EX_CONFIG
    except VenueError as exc:  # unreachable at start-up: systemd retries later
        print(f"quantshift: broker unreachable at start-up: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE


def cmd_replay(args: argparse.Namespace) -> int:
    from quantshift.feeds.replay import ReplayFormatError
    from quantshift.ops.logging import setup_logging
    from quantshift.replay import print_summary, run_replay, write_trades
    from quantshift.settings import StrategySpec, load_settings
    from quantshift.strategies import validate_spec

    try:
        settings = load_settings(bot=args.bot)
        if not args.data.is_file():
            raise ConfigError("--data", f"no such file: {args.data}")
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
        print(f"quantshift: invalid setting --data: {exc}", file=sys.stderr)
        return EX_CONFIG
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
    from quantshift.settings import check_startup, env_name, load_with_sources

    try:
        settings, sources = load_with_sources(bot=args.bot)
        check_startup(settings)
    except ConfigError as exc:
        return _fail_config(exc)
    rows = [(env_name(name), _show(getattr(settings, name)), sources[name])
            for name in type(settings).model_fields]
    derived = [("executor", settings.executor.value), ("ledger", str(settings.ledger_path()))]
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _fail_config(exc)
    except KeyboardInterrupt:
        return 130
