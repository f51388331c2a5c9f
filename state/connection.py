"""The Redis client for lookalike's own keys (registry, ledger, failures, events) on the broker's Redis."""

from __future__ import annotations

import redis

from lookalike.config.settings import Settings


def redis_client(settings: Settings) -> redis.Redis:
    """A client for lookalike's own keys on the broker's Redis (rediss:// and passwords come from the URL)."""
    return redis.Redis.from_url(
        settings.broker_url.get_secret_value(),
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=15,
        retry_on_timeout=True,
    )
