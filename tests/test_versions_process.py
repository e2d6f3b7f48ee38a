"""Strategy versions with the daemon as a process, driven through the CLI: compare,
promote (refused, then forced), rollback, history, a restart that keeps the running
configuration, the phase checklist and the daily report."""

from __future__ import annotations

import json
import re
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


@pytest.mark.process
def test_versions_change_status_and_share_at_run_time(daemon, tmp_path: Path) -> None:
    """``quantshift versions``: a shadow made the canary with its share, the share moved,
    a retired version brought back as a shadow (its book warm on the recent bars), bad
    requests refused with the reason; each change journaled and kept across a restart."""
    three = json.loads(STRATEGIES)
    three[0]["versions"].append({"version": "v3", "status": "retired",
                                 "params": {"fast": 4, "slow": 9}})
    port = free_port()
    env = dict(QUANTSHIFT_HTTP_PORT=str(port), QUANTSHIFT_API_TOKEN=TOKEN,
               QUANTSHIFT_STRATEGIES=json.dumps(three), QUANTSHIFT_SYMBOLS="AAA,BBB,CCC,DDD",
               QUANTSHIFT_WARMUP_BARS="30", COLUMNS="200")
    d = daemon(**env).start()
    d.wait_for(r"\| ready$")
    listing = cli(d, "versions", "list")
    assert listing.returncode == 0, listing.stderr
    assert "ma_cross: v1 active (previous none)" in listing.stdout
    assert "v3         retired  ma_cross(fast=4, mode=long_short, slow=9)" in listing.stdout

    made = cli(d, "versions", "canary", "ma_cross", "v2", "--percent", "50", "--reason",
               "first look")
    assert made.returncode == 0, made.stderr
    assert "ma_cross: v2 is canary (was shadow); v1 active, canary share 50%" in made.stdout
    d.wait_for(r"versions: ma_cross v2 is canary now \(was shadow\), trading 50% of symbols")
    for argv, phrase in [
            (("share", "ma_cross", "150"), "versions share refused (400): field 'percent'"),
            (("shadow", "ma_cross", "v9"), "refused (409): strategy 'ma_cross': no version "
                                           "'v9'"),
            (("retire", "ma_cross", "v1"), "'v1' is the active version"),
            (("canary", "ma_cross", "v3"), "'v2' is already the canary"),
            (("share", "nope", "5"), "refused (404): no strategy 'nope'")]:
        out = cli(d, "versions", *argv)
        assert out.returncode == 1 and phrase in out.stderr, (argv, out.stderr)
    back = cli(d, "versions", "shadow", "ma_cross", "v3")
    assert back.returncode == 0 and "v3 is shadow (was retired)" in back.stdout, back.stderr
    share = cli(d, "versions", "share", "ma_cross", "10")
    assert share.returncode == 0
    assert "ma_cross canary share 10% (was 50%): v2 trades it" in share.stdout
    status = orjson.loads(cli(d, "status", "--json").stdout)
    [row] = status["strategies"]
    assert row["versions"] == {"v1": "active", "v2": "canary", "v3": "shadow"}
    assert row["canary_percent"] == 10
    # The API itself: the token, and a body that names the version the path names.
    assert http(port, "GET", "/versions")[0] == 401
    code, body = http(port, "POST", "/versions/ma_cross/v2", {"strategy": "x",
                                                              "status": "shadow"}, TOKEN)
    assert code == 400 and "in the path" in body["error"]
    code, body = http(port, "POST", "/versions/ma_cross/v2", {"status": "active"}, TOKEN)
    assert code == 400 and "status" in body["error"]
    code, body = http(port, "GET", "/versions", None, TOKEN)
    assert code == 200 and body["strategies"][0]["versions"][2]["book"] is True
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert 'quantshift_canary_percent{strategy="ma_cross"} 10.0' in metrics
    assert 'quantshift_strategy_version{status="shadow",strategy="ma_cross",version="v3"} 1.0' \
        in metrics
    d.wait_for(r"\| ready$")
    assert d.stop()[0] == 0

    history = cli(d, "history")
    assert history.returncode == 0
    changes = [line for line in history.stdout.splitlines() if " version " in line
               or " canary " in line]
    assert len(changes) == 10, history.stdout  # every request, the refused ones too
    assert changes[0].endswith("v2 is canary (was shadow) — first look")
    assert "version  ma_cross v3" in changes[6] and "v3 is shadow (was retired)" in changes[6]
    assert "canary   ma_cross" in changes[7] and "canary share 10% (was 50%)" in changes[7]
    assert "version  ma_cross v2" in changes[8] and "refused (400)" in changes[8]
    d2 = daemon(**env).start()  # what was changed at run time is what runs after it
    d2.wait_for(r"\| ready$")
    [row] = orjson.loads(cli(d2, "status", "--json").stdout)["strategies"]
    assert row["versions"] == {"v1": "active", "v2": "canary", "v3": "shadow"}
    assert row["canary_percent"] == 10
    d2.stop()


def http(port: int, method: str, path: str, body: Any = None, token: str | None = None
         ) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.process
def test_a_version_added_at_run_time_runs_as_a_warm_shadow_and_survives_a_restart(
        daemon, tmp_path: Path) -> None:
    one = json.dumps([{"name": "ma_cross", "params": {"fast": 2, "slow": 5,
                                                      "mode": "long_short"}}])
    port = free_port()
    env = dict(QUANTSHIFT_HTTP_PORT=str(port), QUANTSHIFT_API_TOKEN=TOKEN,
               QUANTSHIFT_STRATEGIES=one, QUANTSHIFT_SYMBOLS="AAA,BBB,CCC,DDD",
               QUANTSHIFT_WARMUP_BARS="20", COLUMNS="200")
    d = daemon(**env).start()
    d.wait_for(r"\| ready$")
    params = tmp_path / "v2.toml"
    params.write_text('slow = 8\n[exits]\nstop_loss = "2%"\n')
    added = cli(d, "versions", "add", "ma_cross", "v2", "--param", "fast=3",
                "--params-file", str(params), "--reason", "a slower exit")
    assert added.returncode == 0, added.stderr
    said = re.search(r"ma_cross: v2 added as a shadow, ma_cross\(fast=3, mode=long_short, "
                     r"slow=8\), warm on (\d+) bars", added.stdout)
    assert said is not None, added.stdout
    # the last 20 bars of each of 4 symbols, and the few rounds that came while it warmed
    assert 80 <= int(said[1]) <= 120, added.stdout
    d.wait_for(r"versions: ma_cross v2 added as a shadow")
    for argv, code_phrase in [
            (("--param", "nope=1"), "refused (400): strategy 'ma_cross': ma_cross parameter "
                                    "nope: no such parameter"),
            (("--param", "fast=abc"), "refused (400): strategy 'ma_cross': ma_cross "
                                      "parameter fast"),
            ((), "refused (409): strategy 'ma_cross': version 'v2' exists (shadow)")]:
        out = cli(d, "versions", "add", "ma_cross", "v2" if not argv else "v3", *argv)
        assert out.returncode == 1 and code_phrase in out.stderr, (argv, out.stderr)
    out = cli(d, "versions", "add", "ma_cross", "bad id!")
    assert out.returncode == 1 and "refused (400): field 'version'" in out.stderr
    out = cli(d, "versions", "add", "nope", "v9")
    assert out.returncode == 1 and "refused (404): no strategy 'nope'" in out.stderr
    out = cli(d, "versions", "add", "ma_cross", "v3", "--params-file", str(tmp_path / "x"))
    assert out.returncode == 78 and "--params-file" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    canary = cli(d, "versions", "canary", "ma_cross", "v2", "--percent", "50")
    assert canary.returncode == 0, canary.stderr
    code, body = http(port, "GET", "/versions", None, TOKEN)
    assert code == 200
    [row] = body["strategies"]
    assert [(v["version"], v["status"], v["book"]) for v in row["versions"]] == [
        ("v1", "active", True), ("v2", "canary", True)]
    assert row["versions"][1]["exits"] == {"stop_loss": "2%"}
    d.wait_for(r"\| fill (buy|sell) ")
    assert d.stop()[0] == 0

    d2 = daemon(**env).start()  # not in the file: the journal's version runs on
    d2.wait_for(r"version 'v2': the version is absent in the configuration and 'canary' "
                r"in the journal; kept \(added at run time\)")
    d2.wait_for(r"\| ready$")
    [row] = orjson.loads(cli(d2, "status", "--json").stdout)["strategies"]
    assert row["versions"] == {"v1": "active", "v2": "canary"}
    d2.stop()
    history = cli(d2, "history").stdout
    assert "add      ma_cross v2" in history and "v2 added as a shadow" in history
    assert "— a slower exit" in history
