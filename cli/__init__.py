"""The `lookalike` command: arguments in, a call into :mod:`lookalike.app`, output out (``main.py``, and
``models.py`` for `lookalike model`); how results look in a terminal is ``render.py``."""
