"""Alerts to Telegram, sent from a bounded queue by one background task.

Components raise an alert by logging through a bound logger
(``logger.bind(alert="fill").info(...)``): the line goes to the log as usual, and a
sink here copies it into the queue. Enqueueing is a ``put_nowait`` — a slow, failing or
unreachable Telegram can never delay a trading decision. A full queue drops the newest
alert and counts it; the sender retries transient failures a bounded number of times,
honours Telegram's ``retry_after`` on 429, and keeps at least ``min_interval`` between
messages (Telegram allows about one message per second per chat).

The bot token is part of the Bot API's URL, so no URL, request or response object is
ever logged: failures are reported by status or exception type only.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from loguru import logger
from pydantic import SecretStr

from quantshift.aio import within

DEFAULT_API_URL = "https://api.telegram.org"
_MAX_TEXT = 4000  # Telegram refuses messages over 4096 characters
_MAX_RETRY_AFTER = 60.0


@dataclass
class AlertStats:
    queued: int = 0
    sent: int = 0
    dropped: int = 0  # the queue was full
    failed: int = 0  # given up after retries, or refused by Telegram
    last_error: str = ""
    by_kind: dict[str, int] = field(default_factory=dict)


class TelegramAlerter:
    """Sends ``[bot/phase] kind: text`` messages to one chat."""

    def __init__(self, token: SecretStr, chat_id: str, *, bot: str, phase: str,
                 api_url: str | None = None, kinds: Iterable[str] = ("all",),
                 queue_size: int = 200, min_interval: float = 1.0, timeout: float = 10.0,
                 retries: int = 3, retry_base: float = 1.0) -> None:
        self._token = token
        self.chat_id = chat_id
        self.prefix = f"[{bot}/{phase}]"
        self.api_url = (api_url or DEFAULT_API_URL).rstrip("/")
        wanted = set(kinds)
        self.kinds: set[str] | None = None if "all" in wanted else wanted - {"none"}
        self.min_interval = min_interval
        self.timeout = timeout
        self.retries = retries
        self.retry_base = retry_base
        self.stats = AlertStats()
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=queue_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._sink_id: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._next_send = 0.0

    # -- producing: never blocks -------------------------------------------------------
    def alert(self, kind: str, text: str) -> bool:
        """Queue an alert; False when it is filtered out or the queue is full."""
        if self.kinds is not None and kind not in self.kinds:
            return False
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            # A log line from another thread: hand the alert to the loop's thread.
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._put, kind, text)
            return True
        return self._put(kind, text)

    def _put(self, kind: str, text: str) -> bool:
        try:
            self._queue.put_nowait((kind, text))
        except asyncio.QueueFull:
            self.stats.dropped += 1
            return False
        self.stats.queued += 1
        return True

    def _sink(self, message: Any) -> None:
        record = message.record
        self.alert(str(record["extra"]["alert"]), record["message"])

    def install(self) -> None:
        """Bind to the running loop and copy every ``alert``-bound log line into the queue."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self._sink_id is None:
            self._sink_id = logger.add(self._sink, level="INFO", format="{message}",
                                       filter=lambda r: "alert" in r["extra"], catch=True)

    # -- sending ------------------------------------------------------------------------
    async def run(self) -> None:
        """The background sender: one message at a time, rate limited, until cancelled."""
        while True:
            kind, text = await self._queue.get()
            try:
                await self._deliver(kind, text)
            except Exception as exc:  # whatever goes wrong, the next alert still goes out
                self.stats.failed += 1
                self.stats.last_error = type(exc).__name__
                logger.warning("telegram: {} alert failed ({})", kind, type(exc).__name__)
            finally:
                self._queue.task_done()

    async def close(self, timeout: float = 2.0, final: tuple[str, str] | None = None,
                    sender: asyncio.Task[None] | None = None) -> None:
        """Stop copying log lines, give queued alerts part of ``timeout`` to go out, then
        send ``final`` (the stop alert) ahead of whatever is still queued, and close."""
        if self._sink_id is not None:
            with contextlib.suppress(ValueError):
                logger.remove(self._sink_id)
            self._sink_id = None
        budget = timeout / 2 if final is not None else timeout
        if not self._queue.empty():
            with contextlib.suppress(TimeoutError):
                await within(self._queue.join(), budget)
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        left = self._queue.qsize()
        if left:
            self.stats.dropped += left
            logger.warning("telegram: {} alerts not sent before the stop", left)
        if final is not None and (self.kinds is None or final[0] in self.kinds):
            self._next_send = 0.0  # the last word goes out now, in one try
            with contextlib.suppress(TimeoutError):
                await within(self._deliver(*final, retries=0), timeout / 2)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def _deliver(self, kind: str, text: str, retries: int | None = None) -> None:
        body = {"chat_id": self.chat_id, "text": f"{self.prefix} {kind}: {text}"[:_MAX_TEXT],
                "disable_web_page_preview": True}
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            wait = self._next_send - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_send = time.monotonic() + self.min_interval
            outcome, delay = await self._post(body)
            if outcome == "sent":
                self.stats.sent += 1
                self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
                return
            if outcome == "refused" or attempt == retries:
                break
            await asyncio.sleep(delay if delay is not None else self.retry_base * 2 ** attempt)
        self.stats.failed += 1
        logger.warning("telegram: {} alert not delivered ({})", kind, self.stats.last_error)

    async def _post(self, body: dict[str, Any]) -> tuple[str, float | None]:
        """One sendMessage call: ("sent"|"retry"|"refused", the delay Telegram asked for)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        url = f"{self.api_url}/bot{self._token.get_secret_value()}/sendMessage"
        try:
            async with self._session.post(url, json=body) as resp:
                status = resp.status
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = {}
        except TimeoutError:
            self.stats.last_error = f"no answer within {self.timeout:g}s"
            return "retry", None
        except aiohttp.ClientError as exc:
            self.stats.last_error = type(exc).__name__  # its text may carry the URL
            return "retry", None
        if status == 200 and isinstance(data, dict) and data.get("ok"):
            return "sent", None
        description = data.get("description", "") if isinstance(data, dict) else ""
        self.stats.last_error = f"HTTP {status} {str(description)[:120]}".strip()
        if status == 429:
            params = data.get("parameters") if isinstance(data, dict) else None
            after = params.get("retry_after") if isinstance(params, dict) else None
            delay = float(after) if isinstance(after, int | float) else None
            return "retry", min(delay, _MAX_RETRY_AFTER) if delay is not None else None
        return ("retry", None) if status >= 500 else ("refused", None)


def build_alerter(settings: Any) -> TelegramAlerter | None:
    """The alerter the settings ask for, or None when Telegram is not configured."""
    token = settings.telegram_bot_token
    if token is None or not token.get_secret_value() or not settings.telegram_chat_id:
        return None
    if "none" in settings.alerts:
        return None
    return TelegramAlerter(token, settings.telegram_chat_id, bot=settings.bot,
                           phase=settings.phase.value, api_url=settings.telegram_api_url,
                           kinds=settings.alerts)
