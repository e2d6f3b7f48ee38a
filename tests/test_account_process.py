"""Instances of one account as processes (`quantshift run`) on a real redis-server: a halt
issued on one holds on the other, across restarts of either and of Redis; /status, /readyz
and /metrics say where the store stands; bad Redis settings exit 78 with one line; a
sandbox instance counts its entries in the account, a paper one counts nothing."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import FAST, DaemonProcess, clean_env
from tests.redis_server import RedisServer, free_port
from tests.test_broker_process import Emulator

pytestmark = pytest.mark.process

TOKEN = "account-test-token-0123456789"


class Bot:
    def __init__(self, root: Path, url: str, instance: str, **env: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = clean_env(root, **{**FAST, "QUANTSHIFT_SIM_INTERVAL": "0.05", **env},
                             QUANTSHIFT_REDIS_URL=url, QUANTSHIFT_ACCOUNT="acct",
                             QUANTSHIFT_INSTANCE=instance, QUANTSHIFT_HTTP_PORT=str(self.port),
                             QUANTSHIFT_API_TOKEN=TOKEN)
        self.proc = DaemonProcess(root, self.env)

    def start(self) -> Bot:
        self.proc.start()
        self.proc.wait_for(r"\| started: ", timeout=30)
        return self

    def call(self, method: str, path: str, body: dict[str, Any] | None = None
             ) -> tuple[int, dict[str, Any] | str]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                raw = r.read().decode()
                code = r.status
        except urllib.error.HTTPError as e:
            raw, code = e.read().decode(), e.code
        try:
            return code, json.loads(raw)
        except ValueError:
            return code, raw

    def state(self) -> str:
        code, st = self.call("GET", "/status")
        assert code == 200 and isinstance(st, dict)
        return str(st["trading"]["state"])

    def stop(self) -> int:
        return self.proc.stop()[0]


def until(cond: Any, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not cond():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_halt_on_one_daemon_holds_on_the_other_across_restarts_of_both_and_of_redis(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = Bot(tmp_path / "a", redis_server.url, "a").start()
    b = Bot(tmp_path / "b", redis_server.url, "b").start()
    try:
        code, out = a.call("POST", "/halt", {"reason": "kill switch"})
        assert code == 200 and isinstance(out, dict) and out["account_shared"] is True
        assert until(lambda: b.state() == "halted", 2.0) < 1.0
        _, st = b.call("GET", "/status")
        assert isinstance(st, dict)
        assert st["trading"]["reason"] == "kill switch"
        assert st["account"]["account"] == "acct" and st["account"]["instance"] == "b"
        assert st["account"]["up"] is True and st["account"]["counts"] is False  # paper
        # B restarts on a new state directory: the halt comes from the account.
        assert b.stop() == 0
        b = Bot(tmp_path / "b2", redis_server.url, "b").start()
        assert b.state() == "halted"
        assert "account: halt by instance a" in b.proc.log()
        # Redis goes: readiness and the metric say so; it comes back: both again.
        redis_server.kill()
        until(lambda: a.call("GET", "/readyz")[0] == 503, 5)
        code, body = a.call("GET", "/readyz")
        assert "shared store" in json.dumps(body)
        code, text = a.call("GET", "/metrics")
        assert 'quantshift_store_up{account="acct",instance="a"} 0.0' in str(text)
        redis_server.start()
        until(lambda: a.call("GET", "/readyz")[0] == 200, 15)
        assert a.state() == "halted" and b.state() == "halted"
        # A resume on B lifts the halt on A.
        code, _ = b.call("POST", "/resume")
        assert code == 200
        until(lambda: a.state() == "active", 2.0)
        code, text = a.call("GET", "/metrics")
        assert 'quantshift_store_up{account="acct",instance="a"} 1.0' in str(text)
    finally:
        codes = [a.stop(), b.stop()]
    assert codes == [0, 0]
    # The paper instances counted nothing of the account's.
    client = redis.Redis.from_url(redis_server.url)
    assert not [k for k in client.keys("quantshift:acct:*")
                if b":trades:" in k or b":exposure" in k or b":pnl:" in k]
    client.close()


@pytest.mark.parametrize("case", ["wrong_password", "not_redis"])
def test_bad_redis_settings_exit_78_with_one_line(tmp_path: Path, case: str) -> None:
    if case == "wrong_password":
        server = RedisServer(tmp_path / "redis", password="the-right-one-123").start()
        url = f"redis://:not-the-password-7@127.0.0.1:{server.port}/0"
    else:
        server = None
        emu = Emulator("exchange", tmp_path)  # an HTTP server on a port of its own
        url = f"redis://127.0.0.1:{emu.port}/0"
    try:
        env = clean_env(tmp_path, **FAST, QUANTSHIFT_REDIS_URL=url)
        d = DaemonProcess(tmp_path, env).start()
        out, err = d.communicate(30)
        assert d.proc is not None and d.proc.returncode == 78
        lines = [ln for ln in err.splitlines() if ln.startswith("quantshift:")]
        assert len(lines) == 1 and "QUANTSHIFT_REDIS_URL" in lines[0], err
        assert "Traceback" not in err
        assert "not-the-password-7" not in err + out + d.log()
    finally:
        if server is not None:
            server.stop()
        else:
            emu.stop()


def test_a_sandbox_instance_counts_its_entries_in_the_account(
        tmp_path: Path, redis_server: RedisServer) -> None:
    emu = Emulator("exchange", tmp_path)
    env = clean_env(tmp_path, **emu.exports, QUANTSHIFT_SIZING="fraction:0.01",
                    QUANTSHIFT_FRACTIONAL="true", QUANTSHIFT_BAR_SECONDS="1",
                    QUANTSHIFT_RISK_MAX_TRADES_PER_DAY="3", QUANTSHIFT_FLUSH_INTERVAL="0.05",
                    QUANTSHIFT_RECONCILE_INTERVAL="0", QUANTSHIFT_REDIS_URL=redis_server.url,
                    QUANTSHIFT_ACCOUNT="acct", QUANTSHIFT_INSTANCE="live-1",
                    QUANTSHIFT_STRATEGIES=json.dumps([{"name": "ma_cross", "params": {
                        "fast": 2, "slow": 4, "mode": "long_only"}}]))
    d = DaemonProcess(tmp_path, env).start()
    try:
        d.wait_for(r"\| fill buy ", count=1, timeout=40)
        client = redis.Redis.from_url(redis_server.url)
        until(lambda: any(client.hget(k, "live-1") is not None
                          for k in client.keys("quantshift:acct:exposure:*")), 5)
        [key] = client.keys("quantshift:acct:trades:*")
        day = key.decode().rsplit(":", 1)[1]
        coids = {c.decode() for c in client.smembers(f"quantshift:acct:coids:{day}")}
        entries = {o["client_order_id"] for o in emu.state()["orders"]
                   if o["side"] == "buy"}
        assert entries and entries <= coids  # every entry at the venue was counted first
        assert int(client.get(key)) == len(coids) <= 3
        client.close()
    finally:
        code = d.stop()[0]
        emu.stop()
    assert code == 0


def _replay_file(path: Path) -> Path:
    lines = ["timestamp,open,high,low,close,volume"]
    price = 100.0
    for i in range(240):
        price += 1 if (i // 7) % 2 == 0 else -1
        lines.append(f"{1_700_000_000 + 60 * i},{price},{price + 0.5},{price - 0.5},"
                     f"{price},100")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_compare_against_lines_two_instances_up_bar_by_bar(
        tmp_path: Path, redis_server: RedisServer) -> None:
    data = _replay_file(tmp_path / "bars.csv")

    def run(name: str, fast: int) -> dict[str, str]:
        root = tmp_path / name
        root.mkdir()
        env = clean_env(root, **{**FAST, "QUANTSHIFT_STRATEGIES": json.dumps(
                            [{"name": "ma_cross", "params": {"fast": fast, "slow": 6,
                                                             "mode": "long_short"}}])},
                        QUANTSHIFT_FEED="replay", QUANTSHIFT_REPLAY_FILE=str(data),
                        QUANTSHIFT_REDIS_URL=redis_server.url, QUANTSHIFT_ACCOUNT="acct",
                        QUANTSHIFT_INSTANCE=name)
        env.pop("QUANTSHIFT_SYMBOLS")  # the file's own
        d = DaemonProcess(root, env).start()
        assert d.proc is not None and d.proc.wait(60) == 0
        return env

    env = run("primary", 2)
    run("same", 2)
    run("other", 3)

    def compare(mine: str, against: str) -> dict[str, Any]:
        import subprocess

        from tests.conftest import quantshift_bin
        out = subprocess.run([quantshift_bin(), "compare", "--instance", mine, "--against",
                              against, "--json"], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    same = compare("same", "primary")
    assert same["compared"] > 10 and same["divergence_ratio"] == 0.0 and same["differ"] == 0
    # The same decisions come to the same paper P&L; the (paper) fills are the primary's
    # real ones: counted, with their slippage against the decision's close.
    money = same["money"]
    assert money["same"]["paper_pnl"] == money["primary"]["paper_pnl"]
    assert money["primary"]["paper_orders"] > 0 and money["primary"]["fills"] > 0
    assert money["primary"]["fills_pnl"] is not None
    assert money["primary"]["slippage_bps"] is not None
    # The phase check's "comparison to production" line reads the same streams.
    import subprocess

    from tests.conftest import quantshift_bin
    checked = subprocess.run([quantshift_bin(), "phase", "check", "--json"], env={
        **env, "QUANTSHIFT_INSTANCE": "same", "QUANTSHIFT_COMPARE_AGAINST": "primary"},
        capture_output=True, text=True, timeout=60)
    [line] = [x for x in json.loads(checked.stdout)["lines"]
              if x["name"] == "comparison to production"]
    assert line["passed"] is True and "0.0% of" in line["value"], line
    other = compare("other", "primary")
    assert other["compared"] > 10 and 0 < other["divergence_ratio"] < 1
    assert other["examples"] and other["why"]
    ex = other["examples"][0]
    assert ex["symbol"] == "bars" and ex["strategy"] == "ma_cross"  # the file names it
    # Without Redis the comparison says which setting it needs.
    bare = {k: v for k, v in env.items() if k != "QUANTSHIFT_REDIS_URL"}
    out = subprocess.run([quantshift_bin(), "compare", "--against", "primary"], env=bare,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 78 and "QUANTSHIFT_REDIS_URL" in out.stderr
