"""Command line for strategy versions: promote, rollback, history, compare.

``promote`` and ``rollback`` act on the running daemon through its control API (the
same path as ``halt``); ``history`` and ``compare`` only read files, so they work whether
the daemon runs or not.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

VERSION_ACTIONS = ("promote", "rollback", "demote", "canary", "retire", "version", "add")


def _reads_files(command: Callable[[argparse.Namespace], int]) \
        -> Callable[[argparse.Namespace], int]:
    """The file-reading commands end with one line, not a traceback, when a ledger or a
    log cannot be read or the output cannot be written."""
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (OSError, sqlite3.Error) as exc:
            print(f"quantshift: {args.command}: {exc}", file=sys.stderr)
            return 1

    return run


def add_subparsers(sub: Any, control: Callable[[argparse.Namespace], int]) -> None:
    promote = sub.add_parser("promote", help="make a strategy version active in the running "
                             "daemon (refused unless the statistics approve it, or --force)")
    promote.add_argument("strategy")
    promote.add_argument("version")
    promote.add_argument("--force", action="store_true",
                         help="promote even when the comparison does not approve it")
    promote.add_argument("--reason", help="why, for the history")
    promote.add_argument("--bot")
    promote.set_defaults(func=control)

    rollback = sub.add_parser("rollback", help="make the previous active version of a "
                              "strategy active again, in the running daemon")
    rollback.add_argument("strategy")
    rollback.add_argument("--reason", help="why, for the history")
    rollback.add_argument("--bot")
    rollback.set_defaults(func=control)

    _add_versions(sub, control)

    history = sub.add_parser("history", help="promotions, rollbacks and demotions, newest "
                             "last, with who and why")
    history.add_argument("--bot")
    history.add_argument("--strategy")
    history.add_argument("--json", action="store_true")
    history.set_defaults(func=_reads_files(cmd_history))

    compare = sub.add_parser("compare", help="every version of the multi-version strategies "
                             "side by side, with the champion/challenger verdict")
    compare.add_argument("--bot")
    compare.add_argument("--strategy")
    compare.add_argument("--since", help="only bars from this UTC date on (YYYY-MM-DD)")
    compare.add_argument("--json", action="store_true")
    compare.add_argument("--against", metavar="INSTANCE",
                         help="line this instance's decisions up with another instance's of "
                              "the account, bar by bar (QUANTSHIFT_REDIS_URL)")
    compare.add_argument("--instance", help="the instance to compare (default: this one, "
                                            "QUANTSHIFT_INSTANCE)")
    compare.set_defaults(func=_reads_files(cmd_compare))

    phase = sub.add_parser("phase", help="phase transitions")
    phase_sub = phase.add_subparsers(dest="phase_command", required=True)
    check = phase_sub.add_parser("check", help="the checklist for the next phase (exit 0 "
                                 "only when every automated line passes)")
    check.add_argument("--bot")
    check.add_argument("--target", help="the phase to check for (default: the next one)")
    check.add_argument("--explained", help="why a non-positive P&L is acceptable")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_reads_files(cmd_phase))

    report = sub.add_parser("report", help="the daily shadow report (Markdown and a PNG "
                            "equity chart)")
    report.add_argument("--bot")
    report.add_argument("--date", help="the UTC day (YYYY-MM-DD; default yesterday)")
    report.add_argument("--out", help="directory (default ./reports)")
    report.set_defaults(func=_reads_files(cmd_report))


def _add_versions(sub: Any, control: Callable[[argparse.Namespace], int]) -> None:
    """``quantshift versions list|shadow|retire|canary|promote|rollback``: the running
    daemon's versions, changed through its control API (token) between two bars."""
    versions = sub.add_parser("versions", help="the running daemon's strategy versions: "
                              "list them, make one a shadow, the canary or retired, set the "
                              "canary's share, promote, roll back")
    vsub = versions.add_subparsers(dest="versions_command", required=True)

    def command(name: str, text: str, with_version: bool = True) -> argparse.ArgumentParser:
        cmd = vsub.add_parser(name, help=text)
        cmd.add_argument("--bot")
        cmd.add_argument("strategy", help="the strategy (its id, or its name)")
        if with_version:
            cmd.add_argument("version", help="the version id")
        cmd.add_argument("--reason", help="why, for the history")
        cmd.set_defaults(func=_versions_action(control), label=f"versions {name}")
        return cmd

    listing = vsub.add_parser("list", help="every strategy's versions: status, parameters, "
                              "the canary's share, the previous active version")
    listing.add_argument("--bot")
    listing.set_defaults(func=control, action="versions", method="GET", label="versions list")
    add = command("add", "add a version of a configured strategy, as a shadow: its own "
                  "paper book, warm on the recent bars; parameters over the configured ones")
    add.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="a parameter (repeat; VALUE as in TOML: 5, 0.5, true, \"ema\")")
    add.add_argument("--params-file", metavar="FILE.toml",
                     help="parameters as TOML (top-level keys), exits in an [exits] table")
    add.add_argument("--name", dest="strategy_name",
                     help="the registered strategy it runs (default: the strategy's own)")
    command("shadow", "run the version in its own paper book only (from retired: its "
                      "book warms on the recent bars)")
    command("retire", "stop running the version (not the active one)")
    canary = command("canary", "make the version the canary (the strategy's one canary)")
    canary.add_argument("--percent", type=int, help="its share of symbols, 0..100 (default: "
                        "the strategy's current share)")
    share = command("share", "set the canary's share of symbols", with_version=False)
    share.add_argument("percent", type=int, help="0..100")
    promote = command("promote", "make the version active (refused unless the statistics "
                      "approve it, or --force)")
    promote.add_argument("--force", action="store_true",
                         help="promote even when the comparison does not approve it")
    command("rollback", "make the previous active version active again", with_version=False)


def _versions_action(control: Callable[[argparse.Namespace], int]
                     ) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        what = args.versions_command
        if what == "add":
            args.action = "versions"
            args.params, args.exits = _params(args.param, args.params_file)
        elif what in ("shadow", "retire", "canary"):
            args.action = f"versions/{args.strategy}/{args.version}"
            args.status = {"retire": "retired"}.get(what, what)
        elif what == "share":
            args.action = "canary"
        else:  # promote, rollback
            args.action = what
        return control(args)

    return run


def _params(pairs: list[str], path: str | None) -> tuple[dict[str, Any], Any]:
    """``--param`` values and a ``--params-file``: parameters and exits (or None); a bad
    one is a ConfigError naming the option (exit 78)."""
    import tomllib

    from quantshift.errors import ConfigError

    params: dict[str, Any] = {}
    exits = None
    if path:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError("--params-file", f"{path}: {exc}") from None
        exits = doc.pop("exits", None)
        if exits is not None and not isinstance(exits, dict):
            raise ConfigError("--params-file", f"{path}: 'exits' must be a table")
        params.update(doc)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--param", f"{pair!r} is not KEY=VALUE")
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word: a string
        params[key.strip()] = value
    return params, exits


def describe_versions(bot: str, answer: dict[str, Any]) -> str:
    """One line (a table for ``list``) for the answer of a versions command."""
    if "added" in answer:
        v = answer["added"]
        params = ", ".join(f"{k}={val}" for k, val in sorted(v["params"].items()))
        return (f"{bot}: {answer['strategy']}: {v['version']} added as a shadow, "
                f"{v['name']}({params}), warm on {answer['warmed_on']} bars")
    if "strategies" in answer:
        lines = []
        for s in answer["strategies"]:
            share = f", canary {s['canary']} at {s['canary_percent']}%" if s["canary"] else ""
            lines.append(f"{bot}: {s['strategy']}: {s['active']} active (previous "
                         f"{s['previous_active'] or 'none'}){share}")
            for v in s["versions"]:
                params = ", ".join(f"{k}={val}" for k, val in sorted(v["params"].items()))
                raised = "  RAISED" if v["version"] in s.get("raised", []) else ""
                lines.append(f"  {v['version']:<10} {v['status']:<8} {v['name']}({params})"
                             f"{raised}")
        return "\n".join(lines)
    if "change" not in answer:  # the canary's share
        who = f"{answer['canary']} trades it" if answer.get("canary") else "no canary now"
        return (f"{bot}: {answer['strategy']} canary share {answer['canary_percent']}% (was "
                f"{answer['was']}%): {who}")
    change = answer["change"]
    if change["action"] != "status":
        return describe_change(bot, answer)
    moved = _moved(change)
    return f"{bot}: {change['strategy']}: {'; '.join(moved) or 'nothing changed'}; " \
           f"{change['active']} active, canary share {answer.get('canary_percent')}%"


def describe_change(bot: str, answer: dict[str, Any]) -> str:
    change = answer["change"]
    line = (f"{bot}: {change['strategy']} {change['action']}: {change['active']} is active "
            f"(was {change['previous_active']})")
    verdict = answer.get("verdict")
    if verdict:
        line += f"; comparison {verdict['decision']}, score {verdict['score']:.1f}"
    if answer.get("forced"):
        line += "; FORCED"
    return line


def read_history(path: Any, strategy: str | None = None) -> list[dict[str, Any]]:
    """The version and demotion actions of a ledger, oldest first."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT ts_ns, action, params, actor, result FROM control WHERE "
                          f"action IN ({','.join('?' * len(VERSION_ACTIONS))}) ORDER BY id",
                          VERSION_ACTIONS).fetchall()
    except sqlite3.OperationalError:  # a ledger from before the control table
        rows = []
    finally:
        db.close()
    out = []
    for ts_ns, action, params, actor, result in rows:
        p = orjson.loads(params) if params else {}
        if strategy is not None and p.get("strategy") not in (None, strategy):
            continue
        r = orjson.loads(result) if result else {}
        out.append({"at": datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat(
            timespec="seconds"), "action": action, "params": p, "actor": actor,
            "result": r})
    return out


def cmd_history(args: argparse.Namespace) -> int:
    from quantshift.config import load_settings

    settings = load_settings(bot=args.bot)
    path = settings.ledger_path()
    if not path.is_file():
        print(f"quantshift: no ledger at {path}", file=sys.stderr)
        return 1
    rows = read_history(path, args.strategy)
    if args.json:
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return 0
    if not rows:
        print(f"{settings.bot}: no promotions, rollbacks or demotions yet")
    for row in rows:
        p, r = row["params"], row["result"]
        status = r.get("status", 200)
        what = r.get("error") if status != 200 else _outcome(r)
        why = f" — {p['reason']}" if p.get("reason") else ""
        target = " ".join(str(p[k]) for k in ("strategy", "version") if p.get(k))
        forced = " --force" if p.get("force") else ""
        print(f"{row['at']}  {row['action']:<8} {target}{forced}  by {row['actor']}: "
              f"{'' if status == 200 else f'refused ({status}): '}{what}{why}")
    return 0


def _outcome(r: dict[str, Any]) -> str:
    """What a version action that went through did, for the history."""
    change = r.get("change")
    if change and change.get("action") == "status":
        return "; ".join(_moved(change)) or "nothing changed"
    if change:
        return f"{change['active']} active (was {change['previous_active']})"
    if "added" in r:
        return f"{r['added']['version']} added as a shadow ({r.get('warmed_on', 0)} bars " \
               "to warm on)"
    if "canary_percent" in r:
        return f"canary share {r['canary_percent']}% (was {r.get('was')}%)"
    if "new_percent" in r:  # the adaptive canary's
        return f"canary share {r['new_percent']}% (was {r.get('old_percent')}%)"
    return str(r.get("detail", "done"))


def _moved(change: dict[str, Any]) -> list[str]:
    return [f"{v} is {after} (was {change['before'].get(v)})"
            for v, after in change["after"].items() if change["before"].get(v) != after]


def load_registry(settings: Any) -> Any:
    """The versions as the daemon runs them: the config, then what the ledger persisted
    (promotions and rollbacks survive in it)."""
    from quantshift.shadow.merge import merge
    from quantshift.shadow.runtime import KV_KEY
    from quantshift.shadow.versions import VersionRegistry

    registry = VersionRegistry.from_config(settings.strategies)
    ledger = settings.ledger_path()
    if ledger.is_file():
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM kv WHERE key = ?", (KV_KEY,)).fetchone()
        except sqlite3.OperationalError:
            row = None
        finally:
            db.close()
        if row:  # what the daemon runs, as it decides it at start (shadow/merge.py)
            registry, _ = merge(registry, orjson.loads(row[0]), settings.versions_from)
    return registry


def cmd_phase(args: argparse.Namespace) -> int:
    from quantshift.config import load_settings
    from quantshift.domain import Phase
    from quantshift.shadow.phase import checklist

    settings = load_settings(bot=args.bot)
    target = None
    if args.target:
        try:
            target = Phase(args.target)
        except ValueError:
            print(f"quantshift: --target {args.target!r}: expected one of "
                  f"{', '.join(p.value for p in Phase)}", file=sys.stderr)
            return 2
    target, lines = checklist(settings, target, args.explained)
    if args.json:
        sys.stdout.write(orjson.dumps({"phase": settings.phase.value, "target": target,
                                       "lines": [x.to_dict() for x in lines]}).decode() + "\n")
    else:
        print(f"{settings.bot}: {settings.phase.value} -> "
              f"{target.value if target else '(last phase)'}")
        for x in lines:
            mark = "[ ]" if x.passed is None else "PASS" if x.passed else "FAIL"
            print(f"  {mark:<4}  {x.name:<40} {x.value}  (needs {x.threshold})")
    automated = [x for x in lines if x.passed is not None]
    return 0 if all(x.passed for x in automated) else 1


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantshift.config import load_settings
    from quantshift.shadow.report import write_report, yesterday

    settings = load_settings(bot=args.bot)
    try:
        day = datetime.strptime(args.date, "%Y-%m-%d").date() if args.date else yesterday()
    except ValueError:
        print(f"quantshift: --date {args.date!r}: expected YYYY-MM-DD", file=sys.stderr)
        return 2
    md, png = write_report(settings, load_registry(settings), day,
                           Path(args.out) if args.out else Path("reports"))
    print(f"{settings.bot}: report {md}, chart {png}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from quantshift.config import load_settings
    from quantshift.shadow.compare import compare

    settings = load_settings(bot=args.bot)
    if args.against:
        return compare_instances(settings, args.instance or settings.instance_name,
                                 args.against, args.json)
    since = None
    if args.since:
        try:
            day = datetime.strptime(args.since, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            print(f"quantshift: --since {args.since!r}: expected YYYY-MM-DD", file=sys.stderr)
            return 2
        since = int(day.timestamp()) * 1_000_000_000
    figures = compare(settings, load_registry(settings), args.strategy, since)
    if not figures:
        print(f"{settings.bot}: no strategy with more than one version"
              + (f" named {args.strategy!r}" if args.strategy else ""), file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps([f.to_dict() for f in figures], default=str,
                                      option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
        return 0
    table = Table(title=f"{settings.bot}: strategy versions" + (f" since {args.since}"
                                                                 if args.since else ""))
    for col in ("strategy", "version", "status", "bars", "signals", "approved", "vetoes",
                "trades", "P&L", "win rate", "Sharpe", "max DD", "divergence", "verdict"):
        table.add_column(col, justify="left" if col in ("strategy", "version", "status",
                                                        "vetoes", "verdict") else "right")
    for f in figures:
        vetoes = ", ".join(f"{k} {n}" for k, n in f.vetoes.most_common(3)) or "-"
        verdict = "-" if f.verdict is None else \
            f"{f.verdict['decision']} ({f.verdict['score']:.0f})"
        table.add_row(f.strategy, f.version, f.status, str(f.bars), str(f.signals),
                      str(f.approved), vetoes, str(f.trades), f"{f.pnl:.2f}",
                      _pct(f.win_rate), "-" if f.sharpe is None else f"{f.sharpe:.3f}",
                      f"{f.max_drawdown:.2f}", _pct(f.divergence), verdict)
    Console().print(table)
    for f in figures:
        if f.verdict is None:
            continue
        print(f"{f.strategy} {f.version} vs active: {f.verdict['decision']}")
        for c in f.verdict["criteria"]:
            print(f"  {'pass' if c['passed'] else 'FAIL'}  {c['name']:<13} {c['detail']}")
    return 0


def compare_instances(settings: Any, mine: str, against: str, as_json: bool) -> int:
    """``compare --against``: two instances' decision streams, bar by bar."""

    from quantshift.errors import EX_CONFIG
    from quantshift.shadow.against import read_comparison

    if settings.redis_url is None:
        print("quantshift: invalid setting QUANTSHIFT_REDIS_URL: compare --against reads "
              "the account's decision streams in Redis; it is not set", file=sys.stderr)
        return EX_CONFIG
    from quantshift.errors import ConfigError

    try:
        d = read_comparison(settings, mine, against)
    except ConfigError as exc:
        print(f"quantshift: invalid setting {exc.setting}: {exc.message}", file=sys.stderr)
        return EX_CONFIG
    a, b = d.rows
    if as_json:
        sys.stdout.write(orjson.dumps(d.as_dict()).decode() + "\n")
        return 0
    if not a or not b:
        print(f"{mine} vs {against}: nothing to compare ({len(a)} and {len(b)} decisions in "
              f"the account {settings.account_name}'s streams)")
        return 1
    print(f"{mine} vs {against}, account {settings.account_name}: {d.compared} decisions "
          f"in the bars both saw, {d.same} the same, divergence {d.ratio * 100:.2f}%")
    for name, m in d.money.items():
        line = (f"  {name}: paper P&L {m['paper_pnl']:,.2f} ({m['paper_orders']} orders at "
                "the decision closes)")
        if m["fills"]:
            line += f"; real fills {m['fills']}, P&L {m['fills_pnl']:,.2f}"
            if m["slippage_bps"] is not None:
                line += f", slippage {m['slippage_bps']:+.1f} bps against the close"
        print(line)
    for why, n in d.why.most_common():
        print(f"  {n:>6}  {why}")
    for r in d.differ[:10]:
        ts = datetime.fromtimestamp(r["ts"] / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"  {ts} {r['symbol']} {r['strategy']}@{r['version'] or '-'}: "
              f"{_side(r['mine'])} | {against}: {_side(r['theirs'])}")
    return 0


def _side(r: dict[str, str] | None) -> str:
    if r is None:
        return "no decision"
    return f"{r['outcome']} target {r['target']}" + (f" ({r['orders']})" if r["orders"] else "")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"
