"""``quantshift emulate alpaca|exchange``: a local broker in the foreground.

The first lines on stdout are the ``export`` lines that point the daemon at it; the
emulator then runs until SIGINT or SIGTERM and exits 0. A taken port or a bad option
exits 78 with one line on stderr naming the option.

Also runnable alone: ``python -m quantshift.emulators.cli alpaca --port 8801``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Run a local broker emulator on 127.0.0.1 in the foreground: "alpaca" (trading and
market-data REST, both websockets) or "exchange" (Binance-shaped spot REST for ccxt, and
the kline and user-data websockets ccxt.pro uses, on the same port).
The first lines on stdout are the export lines that point the daemon at it; it runs
until SIGINT or SIGTERM and exits 0. Faults, positions and the clock can be changed
while it runs: see GET /_emulator/state and POST /_emulator/fault."""
EX_CONFIG = 78
DEFAULT_PORTS = {"alpaca": 8801, "exchange": 8802}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("venue", choices=("alpaca", "exchange"),
                        help="alpaca (trading + market data, REST and websockets) or "
                             "exchange (Binance-shaped spot REST and websockets for ccxt)")
    parser.add_argument("--port", type=int, default=None,
                        help="TCP port on 127.0.0.1 (default 8801 alpaca, 8802 exchange; "
                             "0 = any free port)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between bars per symbol (default 1)")
    parser.add_argument("--data", default=None,
                        help="replay bars from a CSV timestamp,open,high,low,close,volume"
                             "[,symbol] instead of a random walk")
    parser.add_argument("--symbols", default=None,
                        help="comma list (default AAPL,MSFT,SPY or BTC/USDT,ETH/USDT)")
    parser.add_argument("--seed", type=int, default=1, help="random-walk seed (default 1)")
    parser.add_argument("--cash", type=float, default=100_000.0,
                        help="starting cash (USD, or the exchange's quote currency)")


def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``emulate`` on an argparse subparsers object; its ``func`` runs it."""
    parser = subparsers.add_parser(
        "emulate", help="run a local broker emulator (alpaca or a Binance-shaped exchange)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=cmd_emulate)
    return parser


def _fail(option: str, message: str) -> int:
    print(f"quantshift emulate: {option}: {message}", file=sys.stderr, flush=True)
    return EX_CONFIG


def export_lines(venue: str, port: int, symbols: list[str]) -> list[str]:
    base = f"http://127.0.0.1:{port}"
    if venue == "alpaca":
        pairs = [("QUANTSHIFT_FEED", "alpaca"), ("SHADOW_MODE", "sandbox"),
                 ("APCA_API_KEY_ID", "emulator-key"), ("APCA_API_SECRET_KEY", "emulator-secret"),
                 ("APCA_API_BASE_URL", base), ("APCA_API_DATA_URL", base),
                 ("APCA_API_STREAM_URL", f"ws://127.0.0.1:{port}/v2/iex")]
    else:
        pairs = [("QUANTSHIFT_FEED", "ccxt"), ("SHADOW_MODE", "sandbox"),
                 ("CCXT_EXCHANGE", "binance"), ("CCXT_API_KEY", "emulator-key"),
                 ("CCXT_SECRET", "emulator-secret"), ("CCXT_API_URL", base)]
    pairs.append(("QUANTSHIFT_SYMBOLS", ",".join(symbols)))
    return [f"export {k}={shlex.quote(v)}" for k, v in pairs]


def cmd_emulate(args: argparse.Namespace) -> int:
    """The handler: build, bind, print the exports, serve until SIGINT/SIGTERM."""
    port = DEFAULT_PORTS[args.venue] if args.port is None else args.port
    if not 0 <= port <= 65535:
        return _fail("--port", f"{port} is not a TCP port")
    if not args.interval > 0:
        return _fail("--interval", "must be > 0")
    if args.data is not None and not Path(args.data).is_file():
        return _fail("--data", f"{args.data} is not a readable file")
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()] \
        if args.symbols else None
    try:
        emu = _build(args.venue, symbols, args)
    except (ValueError, OSError) as exc:
        option = "--data" if args.data else "--symbols"
        return _fail(option, str(exc))
    try:
        return asyncio.run(_serve(emu, args.venue, port))
    except KeyboardInterrupt:
        return 0


def _build(venue: str, symbols: list[str] | None, args: argparse.Namespace) -> Any:
    if venue == "alpaca":
        from quantshift.emulators.alpaca import AlpacaEmulator

        return AlpacaEmulator(symbols, interval=args.interval, data=args.data, seed=args.seed,
                              cash=args.cash)
    from quantshift.emulators.exchange import ExchangeEmulator

    kwargs: dict[str, Any] = {}
    if symbols is not None:
        kwargs["symbols"] = symbols
    elif args.data is not None:
        kwargs["symbols"] = None
    emu = ExchangeEmulator(interval=args.interval, data=args.data, seed=args.seed,
                           balances={}, **kwargs)
    emu.engine.account.cash = float(args.cash)  # in the quote currency, whichever it is
    return emu


async def _serve(emu: Any, venue: str, port: int) -> int:
    try:
        await emu.start("127.0.0.1", port)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE \
            else (exc.strerror or str(exc))
        return _fail("--port", f"cannot listen on 127.0.0.1:{port}: {reason}")
    symbols = list(emu.engine.instruments)
    with contextlib.suppress(BrokenPipeError):
        print("\n".join(export_lines(venue, emu.port, symbols)), flush=True)
    print(f"quantshift emulate: {venue} emulator on {emu.base_url} ({', '.join(symbols)}; "
          f"a bar every {emu.engine.interval:g}s); state at {emu.base_url}/_emulator/state; "
          "Ctrl-C to stop", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await emu.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quantshift emulate", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return cmd_emulate(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
