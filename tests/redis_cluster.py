"""A real local Redis Cluster (N masters, no replicas) on free ports, for tests that need one.

Like tests/redis_process.py `RedisProcess`, never the machine's shared Redis: every node is a redis-server started
here with its data, node config and log under `directory`. The cluster is formed with
`redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes` and `start()` returns only once every node
reports `cluster_state:ok` with all 16384 slots assigned and agrees on the same slot map, so a client connecting
right after sees a usable cluster. Timeouts are generous: CI and developer machines may have two loaded cores.

    with RedisCluster(tmp_path / "cluster") as cluster:
        client = cluster.client()            # redis.RedisCluster
        os.environ["FRAUDSERVE_REDIS"] = cluster.connection_string
        os.environ["FRAUDSERVE_REDIS_TYPE"] = "redis_cluster"
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.retry import Retry

from core.embedded_redis import free_port, ping

CLUSTER_SLOTS = 16384
START_TIMEOUT_S = 30.0
FORM_TIMEOUT_S = 90.0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_cluster_ports(count: int) -> list[int]:
    """`count` distinct free ports below 55536 whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    for _ in range(200):
        port = free_port()
        if port in ports or any(abs(port - p) == 10000 for p in ports) or not _port_free(port + 10000):
            continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"could not find {count} free TCP ports (with free bus ports) below 55536")


def _client(port: int, timeout: float = 2.0) -> redis.Redis:
    return redis.Redis(
        port=port, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), retries=0)
    )


class RedisCluster:
    """Start and stop a local Redis Cluster of `masters` master nodes with their files in `directory`.

    `node_timeout_ms` is the cluster's failure-detection time (`--cluster-node-timeout`); with no replicas a
    killed master is never replaced, so its slots stay down (`cluster_state:fail` once the others notice) until
    `restart(port)` brings it back with its node identity (and, with `appendonly`, its data: AOF, fsync every second).
    """

    def __init__(
        self, directory: Path, masters: int = 3, node_timeout_ms: int = 5000, appendonly: bool = False
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        server = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError(
                "redis-server and redis-cli are needed: `sudo apt-get install redis-server` (.ci/run does)"
            )
        self.server_binary = server
        self.cli_binary = cli
        self.directory = directory
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self._ports = _free_cluster_ports(masters)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    # -- addresses -----------------------------------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return list(self._ports)

    @property
    def connection_string(self) -> str:
        """Feast's form for a cluster: "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3" (FRAUDSERVE_REDIS)."""
        return ",".join(f"127.0.0.1:{port}" for port in self._ports)

    def log_file(self, port: int) -> Path:
        return self.directory / f"redis-{port}.log"

    @property
    def create_log(self) -> Path:
        return self.directory / "cluster-create.log"

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", port) for port in self._ports],  # type: ignore[no-untyped-call]
            socket_timeout=10,
            socket_connect_timeout=10,
        )

    def node_client(self, port: int) -> redis.Redis:
        """A plain client for one node (DBSIZE, CLUSTER INFO ...)."""
        return _client(port, timeout=5.0)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> RedisCluster:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            for port in self._ports:
                self._start_node(port)
            for port in self._ports:
                self._wait_node(port)
            self._create()
            self._wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, port: int, fresh: bool = True) -> None:
        config = self.directory / f"nodes-{port}.conf"
        if fresh:  # a fresh cluster: no node identity or data left from an earlier run
            config.unlink(missing_ok=True)
            shutil.rmtree(self.directory / f"appendonlydir-{port}", ignore_errors=True)
        self.processes[port] = subprocess.Popen(
            [
                self.server_binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--dbfilename",
                f"dump-{port}.rdb",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "everysec",
                "--appenddirname",
                f"appendonlydir-{port}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(config),
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--cluster-require-full-coverage",
                "yes",
                "--logfile",
                str(self.log_file(port)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _wait_node(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        process = self.processes[port]
        while not ping(port):
            if process.poll() is not None:
                raise RuntimeError(f"cluster node redis-server on port {port} exited; see {self.log_file(port)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"cluster node redis-server on port {port} did not answer within {START_TIMEOUT_S:.0f} s; "
                    f"see {self.log_file(port)}"
                )
            time.sleep(0.05)

    def _create(self) -> None:
        command = [
            self.cli_binary,
            "--cluster",
            "create",
            *(f"127.0.0.1:{port}" for port in self._ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        with self.create_log.open("wb") as log:
            try:
                result = subprocess.run(
                    command,
                    check=False,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=FORM_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired as error:
                raise RuntimeError(
                    f"redis-cli --cluster create did not finish within {FORM_TIMEOUT_S:.0f} s; see {self.create_log}"
                ) from error
        if result.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed (exit {result.returncode}); see {self.create_log} "
                f"and the node logs {self.directory}/redis-*.log"
            )

    def _cluster_ready(self, port: int) -> bool:
        try:
            client = _client(port)
            info: Any = client.cluster("INFO")
            if isinstance(info, dict):  # redis-py parses CLUSTER INFO into a dict; older versions return text
                fields = {str(key): str(value) for key, value in info.items()}
            else:
                text = info.decode() if isinstance(info, bytes) else str(info)
                fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if fields.get("cluster_state") != "ok" or int(fields.get("cluster_slots_ok", 0)) != CLUSTER_SLOTS:
                return False
            if int(fields.get("cluster_known_nodes", 0)) != self.masters:
                return False
            # Every node must know the whole slot map with a master on each range, or a client's first
            # redirect may land on a node that has not yet heard of a peer.
            slots: Any = client.cluster("SLOTS")
            covered = sum(int(entry[1]) - int(entry[0]) + 1 for entry in slots)
            return covered == CLUSTER_SLOTS
        except redis.RedisError:
            return False

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + FORM_TIMEOUT_S
        while not all(self._cluster_ready(port) for port in self._ports):
            for port, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"cluster node on port {port} exited; see {self.log_file(port)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Redis Cluster did not reach cluster_state:ok with all {CLUSTER_SLOTS} slots on every node "
                    f"within {FORM_TIMEOUT_S:.0f} s; see {self.create_log} and {self.directory}/redis-*.log"
                )
            time.sleep(0.1)

    def flush(self) -> None:
        """FLUSHALL on every master (a cluster client's FLUSHALL would need target nodes; this is explicit)."""
        for port in self._ports:
            if port in self.processes:
                _client(port, timeout=10.0).flushall()

    def dbsize(self) -> dict[int, int]:
        """Keys held by each master, by port."""
        sizes: dict[int, int] = {}
        for port in self._ports:
            size: Any = _client(port, timeout=5.0).dbsize()
            sizes[port] = int(size)
        return sizes

    def kill(self, port: int) -> None:
        """SIGKILL one node: a crashed master (with no replicas its slots stay unserved)."""
        process = self.processes.pop(port, None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def restart(self, port: int) -> None:
        """Start a killed node again on its port with its node config (the same node, the same slots). Once every
        node runs again, wait until the whole cluster is `cluster_state:ok`."""
        if port not in self._ports:
            raise ValueError(f"{port} is not a node of this cluster ({self.connection_string})")
        self.kill(port)
        self._start_node(port, fresh=False)
        self._wait_node(port)
        if len(self.processes) == len(self._ports):
            self._wait_ok()

    def stop(self) -> None:
        """Stop every node (terminate, then kill if it lingers) and remove node configs and dumps."""
        for port in list(self.processes):
            process = self.processes.pop(port)
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        for pattern in ("nodes-*.conf", "dump-*.rdb"):
            for path in self.directory.glob(pattern):
                path.unlink(missing_ok=True)
        for path in self.directory.glob("appendonlydir-*"):
            shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
