"""The systemd units and scripts/install.sh.

systemd-analyze checks that each unit parses (``verify``) and that its sandbox rates 2.0
or lower (``security --offline=true``); the directives the daemon relies on are checked
by value; the installer is run into a temporary prefix, never onto the host.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT_DIR = ROOT / "systemd"
INSTALL = ROOT / "scripts" / "install.sh"
BOTS = ("equity", "crypto")
INSTALLED_EXEC = "/opt/quantshift/venv/bin/quantshift"
MAX_EXPOSURE = 2.0
SHUTDOWN_TIMEOUT_S = 10  # QUANTSHIFT_SHUTDOWN_TIMEOUT's default

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this host")

# verify output that is about this host, not about the unit: the service user or the
# env file not existing yet, dependencies not installed here, no systemd or no privileges
# to set up a manager (containers). Anything else verify prints fails the test.
HOST_ONLY = [re.compile(p, re.IGNORECASE) for p in (
    r"\b(user|group)\b.*\bquantshift\b",
    r"/etc/quantshift/\w+\.env",
    r"unit \S+\.(target|service|socket) (not found|could not be found)",
    r"failed to (connect to|create) bus",
    r"system has not been booted with systemd",
    r"operation not permitted|permission denied|read-only file system",
)]
# Diagnostics about the unit's own text: never tolerated, even if a host pattern matches.
UNIT_PROBLEM = re.compile(
    r"\.service:\d+:|unknown (key|section|lvalue)|failed to parse|invalid|not executable"
    r"|ignoring", re.IGNORECASE)


def unit_path(bot: str) -> Path:
    return UNIT_DIR / f"quantshift-{bot}.service"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections to keys to values in file order (a key may repeat, as Environment= does)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {raw!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """A systemd time span such as ``30``, ``30s``, ``1min 30s`` in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def quantshift_executable() -> Path:
    """The ``quantshift`` console script of the environment running these tests."""
    beside = Path(sys.executable).with_name("quantshift")
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("quantshift")
    if found is None:
        pytest.fail("no quantshift console script next to sys.executable or on PATH "
                    "(pip install -e '.[test]')")
    return Path(found)


def verify_problems(unit: Path) -> tuple[int, list[str], list[str]]:
    """Run systemd-analyze verify: its status, output lines, and lines not host-only."""
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    problems = [ln for ln in lines
                if UNIT_PROBLEM.search(ln) or not any(p.search(ln) for p in HOST_ONLY)]
    return proc.returncode, lines, problems


def checkable_copy(bot: str, dest_dir: Path) -> Path:
    """The unit with ExecStart pointed at an existing binary, as verify insists on one."""
    text = unit_path(bot).read_text()
    assert f"ExecStart={INSTALLED_EXEC} " in text
    copy = dest_dir / unit_path(bot).name
    copy.write_text(text.replace(f"ExecStart={INSTALLED_EXEC} ",
                                 f"ExecStart={quantshift_executable()} "))
    return copy


# -- systemd-analyze --------------------------------------------------------------------

@needs_systemd_analyze
@pytest.mark.parametrize("bot", BOTS)
def test_unit_passes_systemd_analyze_verify(bot: str, tmp_path: Path) -> None:
    status, lines, problems = verify_problems(checkable_copy(bot, tmp_path))
    assert not problems, "systemd-analyze verify:\n" + "\n".join(problems)
    # A failure is excused only when verify said why and every reason is about the host.
    assert status == 0 or lines, f"systemd-analyze verify exited {status} without a reason"


@needs_systemd_analyze
def test_verify_check_catches_a_broken_unit(tmp_path: Path) -> None:
    """The filter above must not hide real mistakes: a misspelt key is reported."""
    copy = checkable_copy("equity", tmp_path)
    copy.write_text(copy.read_text().replace("\nType=notify\n", "\nTyp=notify\n"))
    _, _, problems = verify_problems(copy)
    assert any("Typ" in ln for ln in problems), problems


@needs_systemd_analyze
@pytest.mark.parametrize("bot", BOTS)
def test_unit_sandbox_exposure_is_at_most_two(bot: str) -> None:
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(unit_path(bot))],
        capture_output=True, text=True, timeout=60, env={**os.environ, "SYSTEMD_COLORS": "0"})
    output = proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, f"no overall exposure in systemd-analyze output:\n{output}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, (
        f"{unit_path(bot).name} exposure {exposure} > {MAX_EXPOSURE}:\n{output}")


# -- the directives the daemon depends on ------------------------------------------------

@pytest.mark.parametrize("bot", BOTS)
def test_unit_directives(bot: str) -> None:
    unit = parse_unit(unit_path(bot))
    svc = unit["Service"]

    def one(key: str) -> str:
        values = svc.get(key, [])
        assert len(values) == 1, f"{key}= should be set exactly once, got {values}"
        return values[0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert seconds(one("WatchdogSec")) > 0
    assert one("EnvironmentFile") == f"/etc/quantshift/{bot}.env"
    env = dict(item.split("=", 1) for value in svc.get("Environment", [])
               for item in shlex.split(value))
    assert env.get("QUANTSHIFT_STATE_DIR") == "/var/lib/quantshift"
    assert env.get("QUANTSHIFT_LOG_DIR") == "/var/log/quantshift"
    assert env.get("QUANTSHIFT_CONFIG_DIR") == "/etc/quantshift"
    assert shlex.split(one("ExecStart")) == [INSTALLED_EXEC, "run", "--bot", bot]
    assert one("KillSignal") == "SIGTERM"
    assert seconds(one("TimeoutStopSec")) > SHUTDOWN_TIMEOUT_S
    assert one("Restart") == "on-failure"
    assert "78" in one("RestartPreventExitStatus").split()
    assert one("User") not in ("", "root", "0")
    assert one("Group") not in ("", "root", "0")
    assert "DynamicUser" not in svc
    assert one("StateDirectory") == "quantshift"
    assert one("LogsDirectory") == "quantshift"
    assert one("WorkingDirectory") == "/var/lib/quantshift"

    # The sandbox must leave what the daemon needs: brokers over IP, the notify socket.
    families = one("RestrictAddressFamilies").split()
    assert not families[0].startswith("~"), "use an allow list of address families"
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)
    assert svc.get("PrivateNetwork", ["no"])[-1] in ("no", "false", "0")
    assert not any("any" in v.split() for v in svc.get("IPAddressDeny", []))
    assert any("@system-service" in v for v in svc.get("SystemCallFilter", []))
    assert "multi-user.target" in unit["Install"]["WantedBy"][0].split()


# -- scripts/install.sh ------------------------------------------------------------------

def run_install(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(INSTALL), *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)


def test_install_script_is_executable_and_has_help() -> None:
    assert os.access(INSTALL, os.X_OK)
    proc = run_install("--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--dry-run", "--prefix", "--bots", "--skip-venv"):
        assert option in proc.stdout
    bad = run_install("--no-such-option")
    assert bad.returncode != 0
    assert "unknown argument" in bad.stderr


def test_install_dry_run_changes_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    prefix.mkdir()
    proc = run_install("--dry-run", "--prefix", str(prefix))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    would = [ln for ln in proc.stdout.splitlines() if ln.startswith("would:")]
    assert would, proc.stdout
    for bot in BOTS:
        assert any(f"{bot}.env" in ln for ln in would), would
        assert any(f"quantshift-{bot}.service" in ln for ln in would), would
    assert any("venv" in ln for ln in would), would
    assert list(prefix.iterdir()) == [], "a dry run created files"


def test_install_into_prefix_is_idempotent(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    etc = prefix / "etc" / "quantshift"
    units = prefix / "etc" / "systemd" / "system"

    first = run_install("--prefix", str(prefix), "--skip-venv")
    assert first.returncode == 0, first.stdout + first.stderr
    assert not (prefix / "opt").exists(), "--skip-venv still created a venv"
    example = (ROOT / ".env.example").read_text()
    for bot in BOTS:
        env_file = etc / f"{bot}.env"
        assert env_file.read_text() == example
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        unit = units / f"quantshift-{bot}.service"
        assert unit.read_bytes() == unit_path(bot).read_bytes()
    for toml in (ROOT / "config").glob("*.toml"):
        assert (etc / toml.name).read_bytes() == toml.read_bytes()

    edited = "APCA_API_KEY_ID=operator-key\n"
    (etc / "equity.env").write_text(edited)
    second = run_install("--prefix", str(prefix), "--skip-venv")
    assert second.returncode == 0, second.stdout + second.stderr
    assert (etc / "equity.env").read_text() == edited, "an operator's env file was overwritten"
    assert stat.S_IMODE((etc / "equity.env").stat().st_mode) == 0o600
    assert "would:" not in second.stdout
    assert "nothing to change" in second.stdout
