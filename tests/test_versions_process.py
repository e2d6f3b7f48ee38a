"""Strategy versions with the daemon as a process, driven through the CLI: compare,
promote (refused, then forced), rollback, history, a restart that keeps the running
configuration, the phase checklist and the daily report."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import quantshift_bin
from tests.test_http_api import free_port

TOKEN = "process-token-0123456789"
STRATEGIES = json.dumps([{"name": "ma_cross", "params": {"fast": 2, "slow": 5,
                                                         "mode": "long_short"},
                          "versions": [{"version": "v1", "status": "active"},
                                       {"version": "v2", "status": "shadow",
                                        "params": {"fast": 3, "slow": 7}}]}])


def cli(d: Any, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([quantshift_bin(), *argv, "--bot", "equity"], env=d.env,
                          cwd=d.tmp_path, capture_output=True, text=True, timeout=60)


@pytest.mark.process
def test_versions_through_the_cli(daemon, tmp_path: Path) -> None:
    env = dict(QUANTSHIFT_HTTP_PORT=str(free_port()), QUANTSHIFT_API_TOKEN=TOKEN,
               QUANTSHIFT_STRATEGIES=STRATEGIES, QUANTSHIFT_SYMBOLS="AAA,BBB,CCC,DDD",
               COLUMNS="200")
    d = daemon(**env).start()
    d.wait_for(r"strategy versions: 2 version books")
    d.wait_for(r"\| ready$")
    d.wait_for(r"\| fill (buy|sell) ")

    refused = cli(d, "promote", "ma_cross", "v2")
    assert refused.returncode == 1
    assert "not approved (PENDING)" in refused.stderr
    forced = cli(d, "promote", "ma_cross", "v2", "--force", "--reason", "try it")
    assert forced.returncode == 0, forced.stderr
    assert "ma_cross promote: v2 is active (was v1)" in forced.stdout
    assert "FORCED" in forced.stdout
    d.wait_for(r"promotion: ma_cross v2 is active")
    back = cli(d, "rollback", "ma_cross", "--reason", "enough")
    assert back.returncode == 0 and "v1 is active (was v2)" in back.stdout
    again = cli(d, "promote", "ma_cross", "v2", "--force")
    assert again.returncode == 0

    d.wait_for(r"\| fill (buy|sell) ")
    table = cli(d, "compare")
    assert table.returncode == 0, table.stderr
    figures = orjson.loads(cli(d, "compare", "--json").stdout)
    assert [(f["version"], f["status"]) for f in figures] == [("v2", "active"),
                                                             ("v1", "shadow")]
    assert figures[0]["bars"] > 0 and figures[1]["verdict"]["decision"] == "PENDING"
    assert figures[1]["divergence"] is not None
    code, _ = d.stop()
    assert code == 0

    history = cli(d, "history")
    assert history.returncode == 0
    rows = [line for line in history.stdout.splitlines() if line.strip()]
    assert len(rows) == 4
    assert "refused (409)" in rows[0] and "v2 active (was v1) — try it" in rows[1]
    assert "rollback" in rows[2] and "— enough" in rows[2]

    d2 = daemon(**env).start()  # the running configuration survives the restart
    d2.wait_for(r"\| ready$")
    status = orjson.loads(cli(d2, "status", "--json").stdout)
    assert status["strategies"][0]["version"] == "v2"
    d2.stop()

    check = cli(d2, "phase", "check")
    assert check.returncode == 1  # minutes of dry run are not a week of it
    assert "dry_run -> micro_capital" in check.stdout
    assert "FAIL  hours healthy" in check.stdout and "PASS  signals generated" in check.stdout
    assert "[ ]   broker API keys" in check.stdout

    today = datetime.now(UTC).date().isoformat()
    out = tmp_path / "reports"
    rep = cli(d2, "report", "--date", today, "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    md = (out / f"report-equity-{today}.md").read_text()
    png = out / f"equity-equity-{today}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for text in ("ma_cross@v1 (shadow)", "ma_cross@v2 (active)", "## Recommendation",
                 "Keep ma_cross v1 in shadow", "![equity]"):
        assert text in md, text
