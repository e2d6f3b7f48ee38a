"""No client can wedge the operator API: malformed requests get a short 4xx with nothing of
the request echoed or logged (the token least of all), slow and silent connections are
closed, connections are capped without locking out /healthz, and a flood of /status costs
one build.

The in-process tests run a real Daemon on the sim feed and talk to it over sockets; the
process tests run `quantshift run`, as systemd would, with its open-file limit at 1,024
(systemd's default soft LimitNOFILE). Holding 1,100 or 500 sockets at once needs more
than that in this process too, so the tests raise their own soft limit
(resource.setrlimit, up to the hard limit) and put it back afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from quantshift.ops import status as status_module
from tests.conftest import read_db
from tests.test_http_api import AUTH, TOKEN, call, free_port, make_settings, running, wait_until

FLOOD = 1_100
BATCH = 50


@contextlib.contextmanager
def open_files(soft: int) -> Iterator[None]:
    """This process's soft open-file limit set to ``soft`` (capped by the hard limit),
    then put back; a child started inside inherits it."""
    was, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = soft if hard == resource.RLIM_INFINITY else min(soft, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (was, hard))


def needs_files(count: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < count:
        pytest.skip(f"the hard open-file limit ({hard}) is below the {count} this test holds")


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """What the server sends before it closes; fails if it has not closed by ``timeout``."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""


async def healthz(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return status_of(await read_until_closed(reader))
    finally:
        writer.close()


# -- malformed requests, the token and tracebacks (a process, as systemd runs it) -------
MALFORMED = [
    # a control character in the Authorization header, right after the token
    ("control character", b"GET /status HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
     + TOKEN.encode() + b"\x01\r\n\r\n", 400),
    ("NUL in a header", b"POST /halt HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
     + TOKEN.encode() + b"\x00x\r\n\r\n", 400),
    ("9 KB header", b"GET /status HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
     + TOKEN.encode() + b"a" * 9 * 1024 + b"\r\n\r\n", 431),
    ("too many headers", b"GET /status HTTP/1.1\r\nHost: t\r\n"
     + b"".join(b"X-H%d: %s\r\n" % (i, TOKEN.encode()) for i in range(200)) + b"\r\n", 431),
    ("9 KB request line", b"GET /" + TOKEN.encode() + b"b" * 9 * 1024 + b" HTTP/1.1\r\n\r\n",
     414),
    ("garbage request line", b"\x00\x01GARBAGE " + TOKEN.encode() + b"\r\n\r\n", 400),
    ("NUL bytes only", b"\x00" * 64 + b"\r\n\r\n", 400),
    ("bad request line", b"GET /st atus?" + TOKEN.encode() + b" HTTP/1.1 extra\r\n\r\n", 400),
    ("bad version", b"GET /status HTTP/9.Z\r\nAuthorization: Bearer " + TOKEN.encode()
     + b"\r\n\r\n", 400),
]


@pytest.mark.process
def test_malformed_requests_get_4xx_and_the_token_reaches_no_log(daemon: Any) -> None:
    port = free_port()
    d = daemon(QUANTSHIFT_HTTP_PORT=str(port), QUANTSHIFT_API_TOKEN=TOKEN).start()
    try:
        d.wait_for(r"\| ready$")
        for name, data, want in MALFORMED:
            answer = raw_request(port, data)
            assert answer, f"{name}: no answer"
            assert status_of(answer) == want, (name, answer[:200])
            _, _, body = answer.partition(b"\r\n\r\n")
            assert TOKEN.encode() not in answer, name  # nothing of the request echoed
            assert b"Traceback" not in body and len(body) < 200, (name, body)
            assert "error" in orjson.loads(body), name
        # The server is none the worse for it.
        assert status_of(raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
                                           b"Connection: close\r\n\r\n")) == 200
    finally:
        code, _ = d.stop()
    out, err = d.communicate()
    log = d.log()
    assert code == 0
    for where, text in (("stderr", err), ("stdout", out), ("log file", log)):
        assert TOKEN not in text, where
        assert "Traceback" not in text, where
        assert "Error handling request" not in text, where


@pytest.mark.process
def test_1100_half_open_connections_do_not_lock_out_healthz(daemon: Any) -> None:
    needs_files(FLOOD + 200)
    port = free_port()
    with open_files(1024):  # the daemon starts with systemd's default soft limit
        d = daemon(QUANTSHIFT_HTTP_PORT=str(port)).start()
    try:
        d.wait_for(r"\| ready$")
        with open_files(FLOOD + 1024):
            answers = asyncio.run(_flood_then_healthz(port))
    finally:
        code, _ = d.stop()
    assert answers == [200, 200, 200]
    assert code == 0
    _, err = d.communicate()
    assert "Traceback" not in err + d.log()


async def _flood_then_healthz(port: int) -> list[int]:
    writers: list[asyncio.StreamWriter] = []

    async def half_open(i: int) -> None:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        if i % 2:
            writer.write(b"GET /sta")  # half a request line; the other half sends nothing
        writers.append(writer)

    try:
        # In batches the server can take in as they come: connections that only sat in
        # the kernel's accept queue would not be the daemon's to hold.
        for start in range(0, FLOOD, BATCH):
            await asyncio.gather(*(half_open(i) for i in range(start, min(start + BATCH, FLOOD))))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        return [await asyncio.wait_for(healthz(port), 10) for _ in range(3)]
    finally:
        for w in writers:
            w.close()


# -- reading deadlines (in-process) -------------------------------------------------------
async def test_a_half_open_connection_is_closed_after_the_head_deadline(clean: Path) -> None:
    settings = make_settings(clean, http_head_timeout=0.5, http_keepalive_timeout=60)
    async with running(settings) as (d, _):
        port = settings.http_port
        silent_r, silent_w = await asyncio.open_connection("127.0.0.1", port)
        half_r, half_w = await asyncio.open_connection("127.0.0.1", port)
        half_w.write(b"GET /sta")
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)

        async def slowloris() -> None:  # a byte at a time, never a whole head
            for byte in b"GET /status HTTP/1.1\r\nHost: t\r\nX-Padding: " + b"x" * 200:
                if slow_w.is_closing():
                    return
                slow_w.write(bytes([byte]))
                with contextlib.suppress(ConnectionError):
                    await slow_w.drain()
                await asyncio.sleep(0.05)

        trickle = asyncio.create_task(slowloris())
        try:
            assert await read_until_closed(silent_r) == b""  # closed, nothing said
            answer = await read_until_closed(half_r)
            assert status_of(answer) == 408 and b"request head" in answer
            # Closed too, though bytes kept coming (the 408 may be lost to the reset a
            # byte sent after the close provokes).
            trickled = await read_until_closed(slow_r)
            assert trickled == b"" or status_of(trickled) == 408
        finally:
            trickle.cancel()
            for w in (silent_w, half_w, slow_w):
                w.close()
        assert d.http is not None and d.http.gate.stats()["head_timeouts"] == 3
        assert await healthz(port) == 200  # and the server serves on


async def test_an_idle_keep_alive_connection_is_closed(clean: Path) -> None:
    settings = make_settings(clean, http_head_timeout=60, http_keepalive_timeout=0.5)
    async with running(settings):
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.http_port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")  # keep-alive
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert status_of(head) == 200
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await asyncio.wait_for(reader.readexactly(length), 10)
            # Then nothing: the server closes the idle connection by itself.
            assert await read_until_closed(reader) == b""
        finally:
            writer.close()


async def test_a_control_body_that_stalls_is_answered_408_and_closed(clean: Path) -> None:
    settings = make_settings(clean, http_head_timeout=0.5, http_keepalive_timeout=60)
    ledger = clean / "var" / "equity-paper.sqlite"
    async with running(settings) as (d, _):
        port, gate = settings.http_port, d.http.gate  # type: ignore[union-attr]
        head = (b"POST /halt HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + TOKEN.encode()
                + b"\r\nContent-Type: application/json\r\n")
        stalled_r, stalled_w = await asyncio.open_connection("127.0.0.1", port)
        stalled_w.write(head + b"Content-Length: 50\r\n\r\n{")  # then nothing
        huge_r, huge_w = await asyncio.open_connection("127.0.0.1", port)
        huge_w.write(head + b"Content-Length: 99999999\r\n\r\n{")
        try:
            stalled = await read_until_closed(stalled_r)
            assert status_of(stalled) == 408 and b"request body not received" in stalled
            huge = await read_until_closed(huge_r)  # refused before its body is awaited
            assert status_of(huge) == 413
        finally:
            stalled_w.close()
            huge_w.close()
        await wait_until(lambda: gate.stats()["open"] == 0)
        assert d.engine.gate.state == "active"  # type: ignore[union-attr]  # nothing halted
        assert await healthz(port) == 200
    # Written to the journal like any control request that carried the token.
    rows = read_db(ledger, "SELECT action, result FROM control ORDER BY id")
    assert [(a, orjson.loads(r)["status"]) for a, r in rows] == [("halt", 408)]


# -- the connection cap (in-process) ------------------------------------------------------
async def test_a_new_connection_takes_the_place_of_the_oldest_idle_one(clean: Path) -> None:
    settings = make_settings(clean, http_max_connections=8, http_head_timeout=60)
    async with running(settings) as (d, _):
        port = settings.http_port
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
        try:
            await wait_until(lambda: d.http.gate.stats()["open"] == 8)  # type: ignore[union-attr]
            assert await healthz(port) == 200  # the cap is full, but of idle sockets
            oldest_reader = idle[0][0]
            assert await read_until_closed(oldest_reader) == b""  # made room
            stats = d.http.gate.stats()  # type: ignore[union-attr]
            assert stats["evicted"] == 1 and stats["refused"] == 0
        finally:
            for _, w in idle:
                w.close()


async def test_beyond_the_cap_only_health_checks_are_answered(clean: Path) -> None:
    settings = make_settings(clean, http_max_connections=8, http_head_timeout=60)
    async with running(settings) as (d, client):
        port = settings.http_port
        gate = d.http.gate  # type: ignore[union-attr]
        # Eight requests in progress: control requests whose body never comes.
        busy = []
        for _ in range(8):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"POST /halt HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
                    + TOKEN.encode() + b"\r\nContent-Length: 50\r\n\r\n{")
            busy.append((r, w))
        try:
            await wait_until(lambda: gate.stats()["serving"] == 8)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n")  # keep-alive asked
            answer = await read_until_closed(reader)  # refused and closed, not queued
            writer.close()
            assert status_of(answer) == 503 and b"Retry-After: 1" in answer
            assert b"too many requests" in answer
            assert await healthz(port) == 200  # the cap leaves room for health checks
            # A health check let in past the cap keeps its place while it sends its
            # request: newcomers do not evict it.
            probe_r, probe_w = await asyncio.open_connection("127.0.0.1", port)
            await wait_until(lambda: gate.stats()["open"] == 9)
            assert await healthz(port) == 200
            probe_w.write(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")  # keep-alive asked
            answer = await read_until_closed(probe_r)  # one answer, then its slot is free
            probe_w.close()
            assert status_of(answer) in (200, 503) and b'"ready"' in answer
            assert gate.stats()["refused"] == 1 and gate.stats()["evicted"] == 0
        finally:
            for _, w in busy:
                w.close()
        await wait_until(lambda: gate.stats()["open"] == 0)
        code, _ = await call(client, "GET", "/status")  # room again for everyone
        assert code == 200
        assert d.engine.gate.state == "active"  # type: ignore[union-attr]
        # Clients that hung up in the middle of a body are not the daemon's errors.
        assert d.last_error.last is None


# -- /status under a flood (in-process) ---------------------------------------------------
async def test_500_concurrent_status_requests_all_answered_with_one_build(
        clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_files(2 * 500 + 200)
    builds = []
    real = status_module.build_status

    def counted(daemon: Any) -> dict[str, Any]:
        builds.append(1)
        return real(daemon)

    monkeypatch.setattr(status_module, "build_status", counted)  # what /status builds
    settings = make_settings(clean, http_status_ttl=1)
    with open_files(2 * 500 + 1024):
        async with running(settings) as (d, _):
            await wait_until(lambda: d.engine.bars >= 2)  # type: ignore[union-attr]
            connector = aiohttp.TCPConnector(limit=0)  # 500 connections at once
            timeout = aiohttp.ClientTimeout(total=60)
            async with aiohttp.ClientSession(d.http.url, connector=connector,  # type: ignore[union-attr]
                                             timeout=timeout) as client:

                async def one() -> tuple[int, str | None, bytes]:
                    async with client.get("/status") as r:
                        return r.status, r.headers.get("Retry-After"), await r.read()

                answers = await asyncio.gather(*(one() for _ in range(500)))
                for code, retry_after, body in answers:
                    assert code == 200 or (code == 503 and retry_after), (code, body[:200])
                ok = [orjson.loads(body) for code, _, body in answers if code == 200]
                assert ok and all(s["bot"] == "equity" for s in ok)
                # Builds at least a second apart: a few served them all.
                assert len(builds) < 10, len(builds)
                # Yet no answer predates its request: a halt just done is in the next one.
                before = len(builds)
                code, _ = await call(client, "POST", "/halt", headers=AUTH)
                assert code == 200
                code, status = await call(client, "GET", "/status")
                assert status["trading"]["state"] == "halted" and len(builds) == before + 1


async def test_a_burst_of_metrics_scrapes_shares_renders(clean: Path) -> None:
    settings = make_settings(clean, http_status_ttl=1)
    async with running(settings) as (d, client):
        await wait_until(lambda: d.engine.bars >= 2)  # type: ignore[union-attr]
        assert d.metrics is not None
        renders = []
        real = d.metrics.render

        def counted() -> tuple[bytes, str]:
            renders.append(1)
            return real()

        d.metrics.render = counted  # type: ignore[method-assign]

        async def scrape() -> tuple[int, str]:
            async with client.get("/metrics") as r:
                return r.status, await r.text()

        answers = await asyncio.gather(*(scrape() for _ in range(100)))
        assert all(code == 200 and "quantshift_bars_total" in text for code, text in answers)
        assert len(renders) < 10, len(renders)
