"""The daily shadow report: Markdown, plus a PNG of the day's equity curve per version.

``quantshift report [--date D] [--out DIR]`` writes ``report-<bot>-<date>.md`` and
``equity-<bot>-<date>.png``: phase and day count, service health, signals, approvals,
vetoes, trades and P&L per version (the real book, and each version's own book when a
strategy has several), anomalies (ERROR lines, stale feeds, breakers, demotions),
the comparison against the active version, and a recommendation.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from quantshift.settings import Settings
from quantshift.shadow.books import book_path
from quantshift.shadow.compare import VersionFigures, compare
from quantshift.shadow.phase import count_error_lines, is_error_line, ledger_facts, log_lines
from quantshift.shadow.versions import VersionRegistry

NS = 1_000_000_000
_ANOMALY = re.compile(r"\| (ERROR|CRITICAL) |is stale|breaker:|DEMOTED|positions differ")


def _day_bounds(day: date) -> tuple[int, int]:
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * NS
    return start, start + 86_400 * NS


def _book_day(path: Path, lo: int, hi: int) -> dict[str, Any]:
    out: dict[str, Any] = {"signals": 0, "approved": 0, "vetoes": {}, "trades": 0, "pnl": 0.0,
                           "wins": 0, "curve": []}
    if not path.is_file():
        return out
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for outcome, n in db.execute("SELECT outcome, count(*) FROM decisions WHERE ts >= ? "
                                     "AND ts < ? GROUP BY outcome", (lo, hi)):
            out["signals"] += n
            if outcome in ("approved", "exit_only"):
                out["approved"] += n
        for reason, n in db.execute("SELECT substr(reason, 1, instr(reason || ':', ':') - 1),"
                                    " count(*) FROM vetoes WHERE ts >= ? AND ts < ? GROUP BY 1",
                                    (lo, hi)):
            out["vetoes"][reason] = n
        pnls = [p for (p,) in db.execute("SELECT pnl FROM trades WHERE exit_ts >= ? AND "
                                         "exit_ts < ?", (lo, hi))]
        out["curve"] = db.execute("SELECT ts_ns, equity FROM equity WHERE ts_ns >= ? AND "
                                  "ts_ns < ? ORDER BY ts_ns", (lo, hi)).fetchall()
    finally:
        db.close()
    out["trades"], out["pnl"] = len(pnls), round(sum(pnls), 2)
    out["wins"] = sum(1 for p in pnls if p > 0)
    return out


def _anomalies(settings: Settings, day: date) -> list[str]:
    stamp = day.isoformat()
    return [line.rstrip() for line in log_lines(settings.log_dir, settings.bot)
            if line.startswith(stamp) and _ANOMALY.search(line)]


def _chart(curves: dict[str, list[tuple[int, float]]], out: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    drawn = {k: v for k, v in curves.items() if v}
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    for label, points in drawn.items():
        ax.plot([datetime.fromtimestamp(t / NS, UTC) for t, _ in points],
                [e for _, e in points], label=label, linewidth=1.2)
    ax.set_title(title)
    ax.set_ylabel("equity")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no equity points on this day", ha="center", va="center",
                transform=ax.transAxes)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return bool(drawn)


def recommend(figures: list[VersionFigures], demoted: str, errors: int) -> str:
    if demoted:
        return f"Investigate before anything else: the bot is demoted ({demoted})."
    lines = []
    for f in figures:
        if f.verdict is None:
            continue
        d = f.verdict["decision"]
        if d == "APPROVED":
            lines.append(f"Promote {f.strategy} {f.version}: the comparison approves it "
                         f"(score {f.verdict['score']:.0f}).")
        elif d == "PENDING":
            lines.append(f"Keep {f.strategy} {f.version} in {f.status}: "
                         f"{f.verdict['criteria'][0]['detail']}.")
        else:
            lines.append(f"Do not promote {f.strategy} {f.version}: the comparison rejects it.")
    if errors:
        lines.append(f"Read the {errors} ERROR lines of the day before the next phase.")
    return " ".join(lines) or "Keep running: nothing to promote and nothing wrong."


def write_report(settings: Settings, registry: VersionRegistry, day: date,
                 out_dir: Path) -> tuple[Path, Path]:

    lo, hi = _day_bounds(day)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / f"report-{settings.bot}-{day.isoformat()}.md"
    png_path = out_dir / f"equity-{settings.bot}-{day.isoformat()}.png"
    facts = ledger_facts(settings.ledger_path())
    books = {"real book": _book_day(settings.ledger_path(), lo, hi)}
    for strategy in registry.strategies():
        versions = registry.versions(strategy)
        if len(versions) > 1:
            for v in versions:
                books[f"{strategy}@{v.version} ({v.status.value})"] = _book_day(
                    book_path(settings, strategy, v.version), lo, hi)
    figures = compare(settings, registry)
    anomalies = _anomalies(settings, day)
    errors = sum(1 for a in anomalies if is_error_line(a))
    charted = _chart({k: b["curve"] for k, b in books.items()}, png_path,
                     f"{settings.bot} equity, {day.isoformat()} (UTC)")
    p99 = facts["latency_p99_ms"]
    latency = "-" if p99 is None else f"{p99:g} ms"
    demoted = f"DEMOTED: {facts['demoted']}" if facts["demoted"] else "not demoted"
    md = [f"# QuantShift daily report: {settings.bot}, {day.isoformat()}", "",
          f"- Phase: **{settings.phase.value}** (executor {settings.executor.value}), day "
          f"{int(facts['hours'] // 24) + 1} of its ledger",
          f"- Service health: {count_error_lines(settings.log_dir, settings.bot)} ERROR lines "
          f"in the logs, {demoted}, decision latency p99 {latency}",
          "", "## Books", "",
          "| book | signals | approved | vetoes | trades | win rate | P&L |",
          "|---|---:|---:|---|---:|---:|---:|"]
    for name, b in books.items():
        vetoes = ", ".join(f"{k} {n}" for k, n in sorted(b["vetoes"].items())) or "-"
        rate = f"{b['wins'] / b['trades']:.0%}" if b["trades"] else "-"
        md.append(f"| {name} | {b['signals']} | {b['approved']} | {vetoes} | {b['trades']} | "
                  f"{rate} | {b['pnl']:.2f} |")
    md += ["", f"![equity]({png_path.name})" if charted else "_No equity points this day._",
           "", "## Anomalies", ""]
    md += [f"- `{a[:200]}`" for a in anomalies[:50]] or ["- none"]
    if len(anomalies) > 50:
        md.append(f"- ... and {len(anomalies) - 50} more")
    md += ["", "## Comparison with the active version (all days)", ""]
    if figures:
        md += ["| strategy | version | status | trades | P&L | win rate | divergence | verdict |",
               "|---|---|---|---:|---:|---:|---:|---|"]
        for f in figures:
            verdict = f"{f.verdict['decision']} ({f.verdict['score']:.0f})" if f.verdict \
                else "-"
            md.append(f"| {f.strategy} | {f.version} | {f.status} | {f.trades} | {f.pnl:.2f}"
                      f" | {'-' if f.win_rate is None else f'{f.win_rate:.0%}'} | "
                      f"{'-' if f.divergence is None else f'{f.divergence:.1%}'} | {verdict} |")
    else:
        md.append("Each strategy runs one version: nothing to compare.")
    if settings.compare_against:
        from quantshift.shadow.against import production_line

        md += ["", "## Comparison to production", "", f"- {production_line(settings)[1]}"]
    md += ["", "## Recommendation", "", recommend(figures, facts["demoted"], errors), ""]
    md_path.write_text("\n".join(md), encoding="utf-8")
    return md_path, png_path


def yesterday() -> date:
    return (datetime.now(UTC) - timedelta(days=1)).date()
