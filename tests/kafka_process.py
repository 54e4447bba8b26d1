"""A real Apache Kafka broker (4.x, KRaft: broker and controller in one JVM) on free ports, for the Kafka tests.

Its jars come from Maven Central (tests/kafka/pom.xml, `mvn dependency:copy-dependencies`), fetched once into
~/.cache/fraudserve/kafka/<version> (FRAUDSERVE_KAFKA_JARS overrides); `.ci/run` fetches them before the tests.
No distribution archive, no container image: `java` 17+ and `mvn` are all it needs.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

from core.embedded_redis import free_port

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
KAFKA_VERSION = re.search(r"<kafka.version>([^<]+)<", POM.read_text()).group(1)  # type: ignore[union-attr]

LOG4J2 = """status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
"""


def jars_dir() -> Path:
    configured = os.environ.get("FRAUDSERVE_KAFKA_JARS")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "fraudserve" / "kafka" / KAFKA_VERSION


def fetch_jars() -> Path:
    """The broker's jars, fetched from Maven Central the first time (about 45 MB)."""
    target = jars_dir()
    if (target / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("the Kafka tests fetch the broker's jars with Maven: install maven (.ci/run does)")
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    subprocess.run(
        [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={partial}",
         "-DincludeScope=runtime"],
        check=True, timeout=900,
    )  # fmt: skip
    if target.exists():  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.rename(target)
    return target


def java_binary() -> str:
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("the Kafka tests run the broker on Java 17+: install a JDK (.ci/run does)")
    return java


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class KafkaProcess:
    """Start, stop and restart one KRaft broker+controller with its data in `directory`.

    The ports are chosen once: `stop()` (or `kill()`) then `start()` brings the broker back on the same port and
    log directory, as a restarted broker looks to its clients. Besides the PLAINTEXT listener (`bootstrap`) it has a
    SASL_PLAINTEXT one (`sasl_bootstrap`, mechanism PLAIN, user `SASL_USER` with `SASL_PASSWORD`) and a TLS one
    (`ssl_bootstrap`: a self-signed certificate for 127.0.0.1 made with Java's keytool at the first start, its PEM
    in `ca_file` for the clients' ssl.ca.location), for the clients' security settings."""

    SASL_USER = "fraudserve"
    SASL_PASSWORD = "fraudserve-secret"
    TLS_PASSWORD = "fraudserve-keystore"

    def __init__(self, directory: Path, heap_mb: int = 512) -> None:
        self.directory = directory
        self.heap_mb = heap_mb
        self.port = free_port()
        self.controller_port = free_port()
        self.sasl_port = free_port()
        self.ssl_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._formatted = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def keystore(self) -> Path:
        return self.directory / "tls" / "broker.p12"

    @property
    def ca_file(self) -> Path:
        """The broker's self-signed certificate (PEM): what a client trusts (ssl.ca.location)."""
        return self.directory / "tls" / "broker.pem"

    def _make_keystore(self) -> None:
        """A key pair and a self-signed certificate for 127.0.0.1 (its subject alternative name, which the client
        checks) in a PKCS12 keystore, and the certificate as PEM. About a second of keytool, once per broker."""
        if self.keystore.exists():
            return
        self.keystore.parent.mkdir(parents=True, exist_ok=True)
        keytool = Path(java_binary()).resolve().parent / "keytool"
        common = ["-keystore", str(self.keystore), "-storetype", "PKCS12", "-storepass", self.TLS_PASSWORD]
        subprocess.run(
            [str(keytool), "-genkeypair", "-alias", "broker", "-keyalg", "EC", "-groupname", "secp256r1",
             "-dname", "CN=127.0.0.1", "-ext", "SAN=IP:127.0.0.1,DNS:localhost", "-validity", "2", *common],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        subprocess.run(
            [str(keytool), "-exportcert", "-rfc", "-alias", "broker", "-file", str(self.ca_file), *common],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def _properties(self) -> Path:
        data = self.directory / "data"
        text = "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port},"
            f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port},SSL://127.0.0.1:{self.ssl_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port},SASL_PLAINTEXT://127.0.0.1:{self.sasl_port},"
            f"SSL://127.0.0.1:{self.ssl_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,"
            "SSL:SSL",
            f"ssl.keystore.location={self.keystore}",
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.password={self.TLS_PASSWORD}",
            f"ssl.key.password={self.TLS_PASSWORD}",
            "sasl.enabled.mechanisms=PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{self.SASL_USER}="{self.SASL_PASSWORD}";',
            f"log.dirs={data}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=3",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "group.initial.rebalance.delay.ms=0",
            "group.min.session.timeout.ms=1000",
            # the consumer protocol's (KIP-848) bounds, 45 s and 5 s by default: low enough for a group to take the
            # session timeout and heartbeat of the classic tests (KafkaLog sets them as group configs)
            "group.consumer.min.session.timeout.ms=1000",
            "group.consumer.min.heartbeat.interval.ms=250",
            "auto.create.topics.enable=false",
            "num.network.threads=2",
            "num.io.threads=2",
            "background.threads=2",
            "log.flush.interval.messages=9223372036854775807",
            "",
        ])  # fmt: skip
        path = self.directory / "server.properties"
        path.write_text(text)
        return path

    def _java(self, main: str, *args: str) -> list[str]:
        classpath = str(fetch_jars() / "*")
        return [
            java_binary(), f"-Xmx{self.heap_mb}m", f"-Xms{min(self.heap_mb, 256)}m", "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true", f"-Dkafka.logs.dir={self.directory}",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}", "-cp", classpath, main, *args,
        ]  # fmt: skip

    def start(self, timeout_s: float = 90) -> KafkaProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "log4j2.properties").write_text(LOG4J2)
        self._make_keystore()
        properties = self._properties()
        if not self._formatted:
            cluster_id = "-"
            while cluster_id.startswith("-"):  # one in 64 would be read by StorageTool as an option, and fail
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties)),
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            self._formatted = True
        with (self.directory / "stdout.log").open("ab") as out:
            self.process = subprocess.Popen(
                self._java("kafka.Kafka", str(properties)), stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Kafka broker did not start; see {self.directory}/server.log and stdout.log")
            time.sleep(0.2)
        return self

    def ready(self) -> bool:
        """Listening, and answering metadata requests with itself as the controller's broker."""
        if not _listening(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            metadata = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2)
        except Exception:
            return False
        return bool(metadata.brokers)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: a crash, no clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> KafkaProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # `.ci/run`: fetch the broker's jars before the tests
    print(fetch_jars())
