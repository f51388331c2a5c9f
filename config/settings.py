"""The one settings object: every knob is an environment variable with the ``LOOKALIKE_`` prefix.

A ``.env`` file in the working directory is read when present. Read the settings through
:func:`get_settings`; nothing else in lookalike reads ``os.environ`` for its own configuration.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lookalike.config.cpus import usable_cpus

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MODEL = "Qdrant/clip-ViT-B-32-vision"
DEFAULT_TEXT_MODEL = "Qdrant/clip-ViT-B-32-text"
# Measured on planted copies against look-alike products (README, "Duplicate listings"; tests/test_duplicates.py).
DEFAULT_DUPLICATES_MIN_SCORE = 0.95
ENV_PREFIX = "LOOKALIKE_"
BROKER_URL_FORM = "redis://[:password@]host[:port][/db] or rediss://..."
# Both clients of the broker URL must accept it: Celery's (kombu: redis, rediss, sentinel, redis+socket) and
# lookalike's own (redis-py's from_url: redis, rediss, unix). Only these two schemes are common to both.
BROKER_SCHEMES = ("redis", "rediss")


def broker_url_problem(url: str) -> str | None:
    """What is wrong with a broker URL, in a few words (never the password), or None when it is usable.

    Checked when the settings load, because each client fails on its own terms and far from the cause:
    redis-py refuses a missing scheme with a 60-line traceback, urllib a non-numeric port with another, and a
    database that is not a number is read as database 0 by redis-py but refused by kombu, so the producer and
    the workers would not even agree on where the queues are."""
    if not url.strip():
        return f"is empty (expected {BROKER_URL_FORM}; unset it for the default)"
    if "://" not in url:
        return f"has no scheme (expected {BROKER_URL_FORM})"
    parts = urlsplit(url.strip())
    if parts.scheme not in BROKER_SCHEMES:
        return f"has the scheme {parts.scheme + '://'!r}; use redis:// or rediss:// ({BROKER_URL_FORM})"
    netloc = parts.netloc.rpartition("@")[2]
    if not parts.hostname:
        return f"has no host (expected {BROKER_URL_FORM})"
    try:
        _ = parts.port  # urllib raises on a port that is not a number in range
    except ValueError:
        return f"has a port that is not a number from 1 to 65535: {netloc.rpartition(':')[2]!r}"
    databases = [parts.path[1:]] if parts.path not in ("", "/") else []
    databases += parse_qs(parts.query).get("db", [])
    for database in databases:
        if not (database.isascii() and database.isdigit()):
            return f"has a database that is not a number: {database!r} (the path is /0, /1, ...)"
    return None


def settings_error_line(exc: ValidationError) -> str:
    """One line for the settings that could not load: the variables and what is wrong with each.

    Never the rejected values themselves (pydantic's own message quotes them, and a broker URL holds a
    password), so the CLI can print it as is, with no traceback."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        name = ENV_PREFIX + "_".join(str(part) for part in error["loc"]).upper()
        cause = (error.get("ctx") or {}).get("error")
        text = str(cause) if error["type"] == "value_error" and cause is not None else error["msg"]
        if not error["loc"]:  # a rule across settings names its variables itself
            problems.append(text)
            continue
        problems.append(f"{name} {text}" if name == "LOOKALIKE_BROKER_URL" else f"{name}: {text}")
    return "; ".join(problems) or "the settings could not be loaded"


def parse_category_scores(text: str) -> dict[str, float]:
    """``"A=0.99;B | C=0.97"`` -> ``{"a": 0.99, "c": 0.97}``: the last level of each entry's path, lower case
    (a product matches when any level of its own path is that name). Raises ValueError naming the bad entry."""
    scores: dict[str, float] = {}
    for entry in text.split(";"):
        if not entry.strip():
            continue
        category, sep, score = entry.rpartition("=")
        level = category.split("|")[-1].strip().lower()
        if not sep or not level:
            raise ValueError(f"{entry.strip()!r} is not category=score")
        try:
            value = float(score)
        except ValueError:
            raise ValueError(f"{entry.strip()!r}: the score is not a number") from None
        if not 0 <= value <= 1:
            raise ValueError(f"{entry.strip()!r}: the score must be from 0 to 1")
        scores[level] = value
    return scores


def _networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Comma-separated CIDRs (checked when the settings load) as networks."""
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LOOKALIKE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- broker and keys -------------------------------------------------------------------------------
    broker_url: SecretStr = Field(
        SecretStr(DEFAULT_BROKER_URL),
        description="Redis URL for the Celery broker, results and lookalike's own state "
        "(redis://, rediss:// for TLS; a password goes in the URL); checked when the settings load.",
    )
    key_prefix: str = Field("lookalike", description="Prefix of every Redis key lookalike writes itself.")
    embedded_broker: Literal["auto", "never"] = Field(
        "auto",
        description="auto: when no broker URL is set and nothing answers at the default, start an embedded "
        "Valkey server for the duration of the command; never: fail instead.",
    )
    embedded_broker_dir: Path = Field(
        Path("./data/broker"),
        description="Where the embedded broker keeps its append-only file, so the product registry (and with "
        "it incremental re-runs) survives between commands.",
    )

    # --- vector store ----------------------------------------------------------------------------------
    qdrant_url: str | None = Field(None, description="Qdrant server URL (http:// or https://); unset = embedded.")
    qdrant_path: Path = Field(Path("./data/qdrant"), description="Directory of the embedded store.")
    qdrant_api_key: SecretStr | None = Field(None, description="API key for the Qdrant server.")
    qdrant_timeout: float = Field(10.0, description="Seconds per request to the Qdrant server.")
    embedded_store: Literal["edge", "local"] = Field(
        "edge",
        description="Engine behind the embedded store: edge = qdrant-edge-py (Qdrant's own engine, "
        "in-process); local = qdrant-client's pure-Python local mode.",
    )
    collection: str = Field("products", description="Collection (embedded: sub-directory) holding the points.")

    # --- model -------------------------------------------------------------------------------------------
    model: str = Field(DEFAULT_MODEL, description="fastembed image model name.")
    model_dir: Path | None = Field(
        None,
        description="Local model directory (model.onnx + preprocessor_config.json) used instead of "
        "downloading the model.",
    )
    model_cache_dir: Path | None = Field(
        None, description="Where fastembed caches downloaded models (default: fastembed's own cache)."
    )
    text_model: str = Field(
        DEFAULT_TEXT_MODEL,
        description="fastembed text model name for text queries (its vectors share the image model's space).",
    )
    text_model_dir: Path | None = Field(
        None,
        description="Local text model directory (model.onnx + tokenizer.json, tokenizer_config.json, "
        "special_tokens_map.json, config.json) used instead of downloading the text model.",
    )
    onnx_threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime threads per embedding process (0 = usable CPUs / embedding processes, "
        "so threads x processes never exceeds the CPUs this process may use).",
    )
    onnx_providers: str = Field(
        "CPUExecutionProvider",
        description="Comma-separated ONNX Runtime execution providers for the models, in order of preference "
        "(checked against onnxruntime.get_available_providers() when a model loads).",
    )
    batch_size: int = Field(32, ge=1, le=256, description="Images per embedding call.")
    batch_linger: float = Field(
        0.1,
        ge=0,
        description="Seconds a fetch process waits for another image before sending a partial batch (a batch that "
        "keeps receiving images keeps filling, up to BATCH_MAX_LINGER).",
    )
    batch_max_linger: float = Field(
        0.5,
        ge=0,
        description="Longest a partial batch waits from its first image, however steadily images keep coming "
        "(never shorter than BATCH_LINGER; equal to it, a batch leaves BATCH_LINGER after its first image).",
    )
    embed_cache_ttl: int = Field(
        7 * 24 * 3600,
        ge=0,
        description="Seconds an embedding stays cached under its image's content hash (0 disables).",
    )

    # --- workers -----------------------------------------------------------------------------------------
    fetch_concurrency: int = Field(
        256, ge=1, description="Download threads per fetch worker process (latency hiding; decoding is capped apart)."
    )
    fetch_batch: int = Field(
        16,
        ge=1,
        le=256,
        description="Jobs per fetch message: the producer publishes them in batches, downloaded concurrently, so the "
        "broker's and Celery's per-message cost is paid once per batch rather than once per image.",
    )
    fetch_processes: int = Field(
        1, ge=1, description="Fetch worker processes per `lookalike worker` (each with FETCH_CONCURRENCY threads)."
    )
    embed_concurrency: int = Field(
        0, ge=0, description="Embedding processes per worker (0 = usable CPUs / onnx_threads, or one per usable CPU)."
    )
    visibility_timeout: int = Field(
        240,
        ge=60,
        description="Seconds before Redis hands an unacknowledged job of a dead worker to another worker "
        "(plus at most a tenth of it until the next sweep); every task and retry delay is far shorter.",
    )
    task_time_limit: int = Field(120, ge=10, description="Hard limit in seconds for any one task.")
    store_retries: int = Field(
        12, ge=0, description="Retries of a batch the store could not take (exponential backoff, full jitter)."
    )
    store_backoff_max: int = Field(60, ge=1, description="Longest wait in seconds between store retries.")
    store_min_free_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Free bytes the embedded store's filesystem must keep before the store owner writes (0: no "
        "check). Short of it, index batches go back to their queue and wait; the embedded engine memory-maps its "
        "files, and a write that finds the disk full kills the process (SIGBUS) instead of failing.",
    )
    fetch_high_water: int = Field(
        20000, ge=100, description="The producer pauses while more jobs than this wait in the fetch queue."
    )
    embed_high_water: int = Field(
        64, ge=2, description="Fetch workers pause while more batches than this wait in the embed queue, or in the "
        "index queue (a store owner waiting for disk space).",
    )

    wait_grace: float = Field(
        30.0,
        gt=0,
        description="Seconds a waiting command (ingest --wait, reconcile, reindex) lets a queue holding its work "
        "go without a live worker consuming it before saying so (longer than a pool restart).",
    )
    wait_deadline: float = Field(
        120.0,
        gt=0,
        description="Seconds with no live worker consuming a queue that holds its work after which a waiting "
        "command gives up (exit code 3) instead of waiting on nobody.",
    )
    query_concurrency: int = Field(
        1,
        ge=1,
        description="Query encoding processes per worker (shoppers' images and words): their own processes, "
        "never running catalogue batches, each with the usable CPUs as ONNX threads.",
    )
    ingest_niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU niceness added to the catalogue's download/decode and embedding processes, so shoppers' "
        "queries (not niced) take the CPU first; ingestion keeps every idle cycle.",
    )
    ingest_sched_idle: bool = Field(
        True,
        description="Run the catalogue's download/decode and embedding processes under Linux's SCHED_IDLE class "
        "(stronger than niceness: they run only when nothing else wants a core, and a waking query preempts them "
        "at once); ignored where the class does not exist.",
    )

    # --- fetching ----------------------------------------------------------------------------------------
    fetch_connect_timeout: float = Field(5.0, gt=0, description="Seconds to open a download connection.")
    fetch_read_timeout: float = Field(15.0, gt=0, description="Seconds a download may go without receiving data.")
    fetch_deadline: float = Field(
        30.0, gt=0, description="Overall seconds for one download, from connect to last byte (a watchdog cuts it)."
    )
    fetch_max_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest image download in bytes.")
    fetch_max_redirects: int = Field(5, ge=0, description="Redirects a download may follow (each hop re-checked).")
    fetch_retries: int = Field(5, ge=0, description="Retries of a download on connection errors, 429 and 5xx.")
    fetch_backoff_max: int = Field(60, ge=1, description="Longest wait in seconds between download retries.")
    fetch_allow_networks: str = Field(
        "",
        description="Comma-separated CIDRs that downloads may reach although they are loopback, private, "
        "link-local or reserved (default: none).",
    )
    fetch_user_agent: str = Field("lookalike/0.1", description="User-Agent header of downloads.")
    query_allow_networks: str = Field(
        "",
        description="Comma-separated CIDRs that a shopper's image URL may reach although they are loopback, "
        "private, link-local or reserved (default: none; independent of LOOKALIKE_FETCH_ALLOW_NETWORKS).",
    )
    query_fetch_deadline: float = Field(
        5.0,
        gt=0,
        description="Overall seconds for the download of a shopper's image URL (shorter than "
        "LOOKALIKE_QUERY_TIMEOUT, so a slow URL is answered fetch_failed in time).",
    )

    # --- images ------------------------------------------------------------------------------------------
    max_image_pixels: int = Field(
        16_000_000,
        ge=1,
        description="Images with more pixels are refused before decoding (16 Mpx: a 4096x4096 zoom image or a "
        "16 Mpx phone photo; the model sees 224x224).",
    )
    decode_memory_budget: int = Field(
        1024 * 1024 * 1024,
        ge=1,
        description="Bytes a fetch process may spend on images being decoded at once: with the pixel cap it "
        "bounds how many decode together (at most two per usable CPU).",
    )
    image_formats: str = Field("JPEG,PNG,GIF,WEBP,BMP", description="Image formats accepted (Pillow names).")
    query_max_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest query image in bytes.")

    # --- queries -----------------------------------------------------------------------------------------
    query_timeout: float = Field(15.0, gt=0, description="Seconds `lookalike search` waits for a worker.")
    optimize_quiet: float = Field(
        60.0,
        ge=0,
        description="Seconds without a shopper's query before the embedded store's store owner builds its search "
        "index (an optimize holds it for minutes at 100,000 points; until then new points are searched unindexed).",
    )
    query_result_ttl: int = Field(
        300, ge=10, description="Seconds a query's answer is kept in Redis when nobody took it (its sender gave up)."
    )

    # --- HTTP API and page -----------------------------------------------------------------------------
    api_address: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    api_port: int = Field(8080, ge=1, le=65535, description="Port the HTTP API listens on.")
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated keys the HTTP API requires in the X-API-Key header on /v1/ (unset: open).",
    )
    cors_origins: str = Field(
        "", description="Comma-separated origins whose pages may call the HTTP API from a browser (default: none)."
    )
    max_upload_bytes: int = Field(
        10 * 1024 * 1024 + 64 * 1024,
        ge=1024,
        description="Largest request body the HTTP API reads (a photo plus its form fields), checked while it "
        "streams in.",
    )
    api_max_searches: int = Field(
        0,
        ge=0,
        description="Searches the HTTP API admits in flight at once; past it, 503 overloaded with Retry-After at "
        "once (0 = 32 per query encoding process, LOOKALIKE_QUERY_CONCURRENCY: one to two seconds of their work).",
    )
    api_read_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds the HTTP API waits for a request's headers to arrive whole, and for each next piece "
        "of its body; then the connection is closed (headers) or answered 408 body_timeout.",
    )
    api_body_timeout: float = Field(
        60.0, gt=0, description="Seconds a request body may take to arrive whole (408 body_timeout after that)."
    )
    api_max_connections: int = Field(
        512,
        ge=8,
        description="Open connections plus requests in progress the HTTP API serves at once; past it, new "
        "requests get 503 (uvicorn's limit_concurrency). Kept under the open-files limit.",
    )

    # --- duplicate listings (lookalike.state.duplicates) ---------------------------------------------
    duplicates_min_score: float = Field(
        DEFAULT_DUPLICATES_MIN_SCORE,
        ge=0,
        le=1,
        description="Cosine score from which two images of different products are a suspected duplicate: one "
        "setting for the index stage's check, `lookalike duplicates scan` and the report (README, \"Duplicate "
        "listings\", says how the default was measured).",
    )
    duplicates_category_min_score: str = Field(
        "",
        description="Per-category thresholds where products look alike by nature, as `category=score` entries "
        "separated by semicolons (a category is any level of the A | B | C path, compared without case), "
        "e.g. `Clothing | T-Shirts=0.99;Posters=0.985`; the higher one applies when both products match.",
    )

    # --- events, failures, operations ----------------------------------------------------------------
    events_stream: str = Field("lookalike:events", description="Redis Stream of catalogue change events.")
    events_group: str = Field("lookalike", description="Consumer group reading the event stream.")
    events_claim_idle: int = Field(
        60, ge=1, description="Seconds before a dead listener's pending events are claimed by another."
    )
    events_stream_maxlen: int = Field(
        1_000_000,
        ge=100,
        description="Entries the event stream keeps: every publish trims it to about this many (XADD MAXLEN ~), "
        "oldest first, so Redis's memory stays bounded when no listener reads.",
    )
    events_max_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest event in bytes; a larger one is rejected (too_large) before it is parsed.",
    )
    failures_cap: int = Field(100_000, ge=100, description="Failed images kept in the dead-letter list.")
    run_ttl: int = Field(14 * 24 * 3600, ge=60, description="Seconds a run's counters are kept.")
    task_events: bool = Field(
        True, description="Workers send task events (Flower shows every stage); off saves a few Redis writes per job."
    )
    remote_control: bool = Field(
        False,
        description="Celery remote control on the workers (anyone who can write to the broker could then stop or "
        "resize them); lookalike needs none: which workers are alive is read from keys they refresh.",
    )
    log_format: Literal["kv", "json"] = Field("kv", description="Job outcome log lines: key=value or JSON.")
    log_level: str = Field("INFO", description="Level of lookalike's own log lines (job outcomes are INFO).")
    flower_basic_auth: SecretStr | None = Field(None, description="user:password that Flower requires.")
    flower_address: str = Field("127.0.0.1", description="Address Flower listens on.")
    flower_allow_unauthenticated: bool = Field(
        False, description="Let Flower listen on a non-loopback address without basic auth."
    )

    @field_validator("model_dir", "text_model_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``LOOKALIKE_MODEL_DIR=`` means no local directory, not the current one."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("onnx_providers")
    @classmethod
    def _providers_named(cls, value: str) -> str:
        if not [part for part in value.split(",") if part.strip()]:
            raise ValueError("name at least one provider, e.g. CPUExecutionProvider")
        return value

    @field_validator("query_timeout")
    @classmethod
    def _query_outlasts_its_download(cls, value: float, info: ValidationInfo) -> float:
        """A shopper's URL is answered (fetch_failed) before the shopper's query times out."""
        deadline = info.data.get("query_fetch_deadline")
        if deadline is not None and deadline >= value:
            raise ValueError(
                f"must be longer than LOOKALIKE_QUERY_FETCH_DEADLINE ({deadline:g} s), so that a slow image URL is "
                "answered before the query times out"
            )
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url_usable(cls, value: SecretStr) -> SecretStr:
        problem = broker_url_problem(value.get_secret_value())
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("fetch_allow_networks", "query_allow_networks")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        _networks(value)  # raises on a part that is not a CIDR
        return value

    @model_validator(mode="after")
    def _deadline_after_grace(self) -> Settings:
        if self.wait_deadline < self.wait_grace:
            raise ValueError("LOOKALIKE_WAIT_DEADLINE must be at least LOOKALIKE_WAIT_GRACE")
        return self

    @field_validator("duplicates_category_min_score")
    @classmethod
    def _category_scores_parse(cls, value: str) -> str:
        parse_category_scores(value)
        return value

    # --- derived ---------------------------------------------------------------------------------------
    @property
    def broker_url_is_set(self) -> bool:
        return "broker_url" in self.model_fields_set

    @property
    def uses_embedded_store(self) -> bool:
        return not self.qdrant_url

    @property
    def allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Where a catalogue download may connect beyond public addresses (LOOKALIKE_FETCH_ALLOW_NETWORKS)."""
        return _networks(self.fetch_allow_networks)

    @property
    def query_allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Where a shopper's image URL may connect beyond public addresses (LOOKALIKE_QUERY_ALLOW_NETWORKS)."""
        return _networks(self.query_allow_networks)

    @property
    def api_key_values(self) -> tuple[str, ...]:
        """The accepted API keys; empty when the API is open."""
        if self.api_keys is None:
            return ()
        return tuple(part.strip() for part in self.api_keys.get_secret_value().split(",") if part.strip())

    @property
    def cors_origin_list(self) -> list[str]:
        return [part.strip() for part in self.cors_origins.split(",") if part.strip()]

    @property
    def allowed_image_formats(self) -> frozenset[str]:
        return frozenset(part.strip().upper() for part in self.image_formats.split(",") if part.strip())

    @property
    def effective_embed_concurrency(self) -> int:
        if self.embed_concurrency:
            return self.embed_concurrency
        return max(1, usable_cpus() // max(1, self.onnx_threads))

    @property
    def effective_onnx_threads(self) -> int:
        """ONNX threads per embedding process: as set, or the usable CPUs shared among the processes."""
        if self.onnx_threads:
            return self.onnx_threads
        return max(1, usable_cpus() // self.effective_embed_concurrency)

    @property
    def effective_api_max_searches(self) -> int:
        return self.api_max_searches or 32 * self.query_concurrency

    @property
    def query_onnx_threads(self) -> int:
        """ONNX threads per query encoding process: the usable CPUs shared among those processes only (the
        catalogue's embedding processes are niced, so a query gets the cores when it needs them)."""
        if self.onnx_threads:
            return self.onnx_threads
        return max(1, usable_cpus() // self.query_concurrency)

    @property
    def onnx_provider_names(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.onnx_providers.split(",") if part.strip())

    @property
    def duplicates_category_scores(self) -> dict[str, float]:
        """Category level (lower case) -> its duplicate threshold, from LOOKALIKE_DUPLICATES_CATEGORY_MIN_SCORE."""
        return parse_category_scores(self.duplicates_category_min_score)

    def key(self, *parts: str) -> str:
        """A Redis key under lookalike's prefix."""
        return ":".join((self.key_prefix, *parts))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests that change the environment)."""
    get_settings.cache_clear()
