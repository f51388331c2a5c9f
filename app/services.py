"""What a use case is given: the settings of this command's broker, the light state on it, the gateway to
the workers, and where to say things. Built once per command from the broker it resolved, and passed down:
nothing below reads the broker from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from lookalike.app.broker import Broker, Note
from lookalike.app.gateway import Gateway
from lookalike.config.settings import Settings
from lookalike.state.context import StateContext


@dataclass
class Services:
    settings: Settings
    state: StateContext
    gateway: Gateway
    note: Note
    broker: Broker | None = None  # the command's resolved broker, when it has one (already named on stderr)

    @classmethod
    def on(cls, settings: Settings, note: Note, broker: Broker | None = None) -> Services:
        return cls(settings, StateContext(settings), Gateway(settings, note=note), note, broker)
