"""lookalike: reverse image search for e-commerce catalogues.

The root of the installed package. Its parts keep the design card's top-level folders and are installed
beneath it (see ``[tool.setuptools.package-dir]`` in pyproject.toml), by role:

- ``lookalike.cli`` (cli/) and ``lookalike.api`` (api/): the two adapters, each parse -> call -> render;
- ``lookalike.app`` (app/): the application layer both call (the gateway to the workers, the use cases, the
  broker this process uses);
- ``lookalike.producer`` (producer/) and ``lookalike.worker`` (worker/): the two sides of the broker;
- ``lookalike.state`` (state/): what both sides share; ``lookalike.config`` (config/): the settings;
- ``lookalike.testing`` (testing/): tiny models, images and an image server for tests and benchmarks.
"""

__version__ = "0.1.0"
