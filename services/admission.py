"""Who may open a socket, and who the client is: the decisions behind the listening side.

- `TrustedProxies`: the client's address. X-Forwarded-For / X-Real-Ip are believed only from
  peers inside TRUSTED_PROXIES (issue: any client could write the logged address).
- `Admission`: open WebSockets per instance (MAX_CONNECTIONS, over it 503), counted from
  admission to close.
- `AddressCounts`: open public connections per client address, plain HTTP and WebSocket alike
  (MAX_CONNECTIONS_PER_IP, over it 429), counted by handlers/http_server.py from a connection's
  first request to its close.
- `DescriptorBudget`: how many TCP connections this process can hold and still have descriptors
  left for health checks, Redis, Kafka and logs (RLIMIT_NOFILE less what is open at start and a
  reserve). handlers/http_server.py sheds and pauses against it.

Everything here is per instance: N workers or replicas allow N times the limits.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import resource
from collections.abc import Iterable

log = logging.getLogger("gateway.admission")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
FD_RESERVE = 64  # descriptors kept for health checks, Redis and Kafka reconnects, log files


def parse_networks(specs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (or bare addresses); ValueError names the first bad one."""
    nets = []
    for spec in specs:
        try:
            nets.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR: {spec!r}") from None
    return tuple(nets)


class TrustedProxies:
    def __init__(self, specs: Iterable[str]) -> None:
        self._nets = parse_networks(specs)

    def __bool__(self) -> bool:
        return bool(self._nets)

    def trusts(self, address: str) -> bool:
        ip = parse_address(address)
        return ip is not None and any(ip in net for net in self._nets)

    def client_ip(self, peer: str, forwarded_for: str | None, real_ip: str | None) -> str:
        """The peer, unless it is a trusted proxy: then X-Real-Ip (a proxy sets it, whatever the
        client sent), else the nearest address in X-Forwarded-For that is not a trusted proxy
        itself (read right to left, as each proxy appends). A malformed entry ends the walk:
        nothing to its left can be believed. Addresses come back in canonical form."""
        if not self._nets or not self.trusts(peer):
            return peer
        if real_ip and (ip := _canonical(real_ip)) is not None:
            return ip
        client = peer
        for hop in reversed((forwarded_for or "").split(",")):
            ip = _canonical(hop)
            if ip is None:
                break
            client = ip
            if not self.trusts(ip):
                break
        return client


def parse_address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, an IPv4-mapped IPv6 address as the IPv4 one (a dual-stack socket reports
    `::ffff:a.b.c.d`); None if `text` is not an address."""
    try:
        ip = ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _canonical(text: str) -> str | None:
    ip = parse_address(text)
    return None if ip is None else str(ip)


def address_bucket(ip: str) -> str:
    """What MAX_CONNECTIONS_PER_IP counts by: the address, or its /64 for IPv6 (one host usually
    has a whole /64, and would otherwise have an allowance per address)."""
    addr = parse_address(ip)
    if addr is None:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class Admission:
    """Counts admitted WebSockets; `admit` answers None (welcome) or the refusal's HTTP status."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.total = 0

    def admit(self) -> int | None:
        if self.total >= self.max_connections:
            return 503
        self.total += 1
        return None

    def release(self) -> None:
        self.total = max(self.total - 1, 0)


class AddressCounts:
    """Connections by address bucket (`address_bucket`), at most `max_per_ip` each."""

    def __init__(self, max_per_ip: int) -> None:
        self.max_per_ip = max_per_ip
        self._counts: dict[str, int] = {}

    def add(self, bucket: str) -> bool:
        count = self._counts.get(bucket, 0)
        if count >= self.max_per_ip:
            return False
        self._counts[bucket] = count + 1
        return True

    def remove(self, bucket: str) -> None:
        count = self._counts.get(bucket, 0)
        if count <= 1:
            self._counts.pop(bucket, None)
        else:
            self._counts[bucket] = count - 1


def descriptor_budget(reserve: int = FD_RESERVE) -> int:
    """Connections this process may hold: RLIMIT_NOFILE (raised to its hard limit first, as a
    server should) less the descriptors open now and the reserve."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 32
    return max(soft - in_use - reserve, 1)
