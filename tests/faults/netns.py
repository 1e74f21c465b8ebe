"""A network namespace joined to the host by a veth pair, whose link a test cuts and restores.

    with open_namespace() as ns:
        subprocess.Popen(ns.argv(sys.executable, "-c", ...))   # runs inside, sees ns.host_address
        ns.cut()        # the host end down: packets both ways are dropped, no one is told
        ns.restore()    # the host end up; the kernel puts the route back

The host reaches the namespace at ``ns.address`` and the namespace reaches the host at
``ns.host_address``: both from RFC 2544's range (tests/postgres.py lets that range in without a
password, and its server listens on all IPv4 addresses). Needs root and ``ip`` (iproute2);
``unavailable()`` says why not.

Nothing is left behind: leaving the ``with`` kills every process still in the namespace and
deletes it, which destroys the veth pair. A session killed outright (kill -9 of pytest) leaves
its namespace; the next ``open_namespace`` in any session deletes the namespaces and links of
dead owners (the owner's pid is in the namespace's name and in the link's alias).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

PREFIX = "pipeline-"  # namespaces: pipeline-<owner pid>-<block>
ALIAS = "pipeline-tests:"  # host links' alias: pipeline-tests:<owner pid>
RANGE = ipaddress.ip_network("198.18.0.0/15")  # as tests/postgres.py's NETNS_RANGE
BLOCKS = RANGE.num_addresses // 4  # one /30 per namespace


class NetnsError(Exception):
    """An ``ip`` command failed; the message has its stderr."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (install iproute2)"
    return None


@dataclass(frozen=True)
class Namespace:
    name: str
    host_dev: str  # the veth end left on the host: cut() and restore() act on it
    host_address: str  # the host, as seen from inside
    address: str  # the namespace, as seen from the host

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside the namespace (as argv for subprocess)."""
        return ["ip", "netns", "exec", self.name, *command]

    def cut(self) -> None:
        """Drop every packet between the namespace and the host, in silence: no RST, no ICMP,
        so both ends learn of it only from their own timeouts (as in a real partition)."""
        ip("link", "set", self.host_dev, "down")

    def restore(self, *, timeout: float = 5.0) -> None:
        """Bring the link back up and wait until the host can route to the namespace again."""
        ip("link", "set", self.host_dev, "up")
        deadline = time.monotonic() + timeout
        while not self.linked():
            if time.monotonic() > deadline:
                raise NetnsError(f"{self.host_dev} did not come back within {timeout:g}s")
            time.sleep(0.02)

    def linked(self) -> bool:
        """Both ends have a carrier (a veth's comes up a moment after its admin state)."""
        return _carrier(self.host_dev) and _carrier("veth0", netns=self.name)

    def pids(self) -> list[int]:
        return [int(p) for p in ip("netns", "pids", self.name, check=False).stdout.split()]


def _carrier(dev: str, *, netns: str | None = None) -> bool:
    where = ("-n", netns) if netns else ()
    links = json.loads(ip(*where, "-j", "link", "show", "dev", dev).stdout)
    return "LOWER_UP" in links[0].get("flags", [])


def _kill_inside(name: str) -> None:
    # A process left in the namespace keeps it (and the veth pair) alive after `ip netns del`.
    for _ in range(50):
        pids = [int(p) for p in ip("netns", "pids", name, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def delete(name: str) -> None:
    _kill_inside(name)
    ip("netns", "del", name, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale() -> list[str]:
    """Delete the namespaces and host links of test sessions that are gone; return their
    names."""
    reaped = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(re.escape(PREFIX) + r"(\d+)-(\d+)", name)
        if m and not _alive(int(m.group(1))):
            delete(name)
            reaped.append(name)
    for link in json.loads(ip("-j", "link", "show", check=False).stdout or "[]"):
        alias = link.get("ifalias", "")
        if alias.startswith(ALIAS) and not _alive(int(alias[len(ALIAS):])):
            ip("link", "del", link["ifname"], check=False)
            reaped.append(link["ifname"])
    return reaped


def _host_addresses() -> set[ipaddress.IPv4Address]:
    found = set()
    for link in json.loads(ip("-j", "-4", "addr", "show").stdout or "[]"):
        for info in link.get("addr_info", []):
            found.add(ipaddress.IPv4Address(info["local"]))
    return found


@contextlib.contextmanager
def open_namespace() -> Iterator[Namespace]:
    """Make a namespace with a veth pair to the host, addresses and routes; delete it on exit,
    whatever happened (NetnsError if it cannot be made)."""
    reason = unavailable()
    if reason:
        raise NetnsError(reason)
    reap_stale()
    owner = os.getpid()
    in_use = _host_addresses()
    for _ in range(100):
        block = random.randrange(BLOCKS)
        base = RANGE.network_address + 4 * block
        host_address, address = base + 1, base + 2
        if host_address in in_use:
            continue
        host_dev = f"plv{block}h"  # at most 15 characters: block < 32768
        # Creating the link claims the block: a second session picking it fails here.
        if ip("link", "add", host_dev, "type", "veth", "peer", "name", f"plv{block}n",
              check=False).returncode == 0:
            break
    else:
        raise NetnsError("no free address block for a namespace")
    name = f"{PREFIX}{owner}-{block}"
    try:
        ip("link", "set", host_dev, "alias", f"{ALIAS}{owner}")
        ip("netns", "add", name)
        ip("link", "set", f"plv{block}n", "netns", name)
        ip("-n", name, "link", "set", f"plv{block}n", "name", "veth0")
        ip("addr", "add", f"{host_address}/30", "dev", host_dev)
        ip("-n", name, "addr", "add", f"{address}/30", "dev", "veth0")
        ip("link", "set", host_dev, "up")
        ip("-n", name, "link", "set", "veth0", "up")
        ip("-n", name, "link", "set", "lo", "up")
        ns = Namespace(name=name, host_dev=host_dev, host_address=str(host_address),
                       address=str(address))
        deadline = time.monotonic() + 5
        while not ns.linked():
            if time.monotonic() > deadline:
                raise NetnsError(f"{host_dev} has no carrier after 5s")
            time.sleep(0.02)
        yield ns
    finally:
        delete(name)
        ip("link", "del", host_dev, check=False)  # gone with the namespace, unless never moved
