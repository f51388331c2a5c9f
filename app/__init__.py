"""The application layer: what lookalike does, called by both adapters (the CLI and the HTTP API).

An adapter parses its input, calls in here, and renders or serializes the answer; it decides nothing about
where a request runs (:mod:`lookalike.app.gateway`), how a run is started and finished
(:mod:`lookalike.state.runs`), or which broker this process uses (:mod:`lookalike.app.broker`).
"""
