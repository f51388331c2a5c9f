"""Configuration: one pydantic-settings object read from ``LOOKALIKE_*`` variables and ``.env``."""

from lookalike.config.settings import Settings, get_settings, reset_settings

__all__ = ["Settings", "get_settings", "reset_settings"]
