"""State shared by the producer, the workers, the CLI and the API: Redis-backed records (the product registry,
the run ledger, the failure log), the messages that cross the broker, queue names, and the one rejection type.

Nothing here imports the worker's heavy parts (Pillow, numpy's image paths, requests, fastembed, Celery's worker
side), so publishing an event or answering an API request can use it cheaply. ``tests/test_structure.py`` keeps
it that way.
"""
