"""Where orders go is decided by the endpoint, not by the label.

``SHADOW_MODE=sandbox`` only says what the operator meant; the trading endpoint says where
the orders land. A venue's own live host is live, its own paper/testnet host and any
loopback address are paper; any other host (a proxy, another machine) may forward to
anything, so it is live unless ``QUANTSHIFT_ENDPOINT_IS_PAPER`` names it. Classification
reads only the URL: no name is resolved, nothing is dialled.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from quantshift.domain import ExecutorKind


class Why(StrEnum):
    LIVE_HOST = "the venue's live host"
    PAPER_HOST = "the venue's paper/testnet host"
    LOOPBACK = "loopback"
    DECLARED = "QUANTSHIFT_ENDPOINT_IS_PAPER"
    UNKNOWN = "not a known paper host, not loopback, not in QUANTSHIFT_ENDPOINT_IS_PAPER"


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    host: str
    paper: bool
    why: Why

    @property
    def label(self) -> str:
        return f"{'paper/testnet' if self.paper else 'LIVE, real money'}: {self.why.value}"


def host_of(url: str) -> str:
    """The host of a URL, lower case, without brackets or port (``""`` when it has none)."""
    try:
        return (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:  # an unbalanced IPv6 bracket
        return ""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as an IPv4-mapped address) and ``localhost``."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def classify(url: str, live_hosts: Iterable[str], paper_hosts: Iterable[str],
             declared_paper: Iterable[str] = ()) -> Endpoint:
    """Live or paper, and why. A known live host stays live whatever else says it is not."""
    host = host_of(url)
    lowered = {h.lower() for h in live_hosts}
    if host in lowered:
        return Endpoint(url, host, False, Why.LIVE_HOST)
    if host in {h.lower() for h in paper_hosts}:
        return Endpoint(url, host, True, Why.PAPER_HOST)
    if is_loopback(host):
        return Endpoint(url, host, True, Why.LOOPBACK)
    if host and host in {h.lower() for h in declared_paper}:
        return Endpoint(url, host, True, Why.DECLARED)
    return Endpoint(url, host, False, Why.UNKNOWN)


def executor_kind(requested: ExecutorKind, endpoint: Endpoint | None) -> ExecutorKind:
    """The executor that runs: a sandbox pointed at a live endpoint is live (it needs the
    live confirmation and keeps the live ledger); a live executor stays live on a paper
    endpoint (the operator asked for it, and confirms it)."""
    if requested is ExecutorKind.SANDBOX and endpoint is not None and not endpoint.paper:
        return ExecutorKind.LIVE
    return requested


def describe(kind: ExecutorKind, endpoint: Endpoint) -> str:
    """The words of the start-up line and `quantshift config`: the endpoint's class."""
    if kind is ExecutorKind.LIVE and endpoint.paper:
        return f"live executor on a paper/testnet endpoint: {endpoint.why.value}"
    return endpoint.label
