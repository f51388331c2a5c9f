"""The package layout's rules, checked on the source: shared state is its own package, the producer and the
worker never import each other, and publishing one change event stays light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("PIL", "numpy", "requests", "fastembed", "onnxruntime", "pandas", "celery", "qdrant_client", "qdrant_edge")


def imported_modules(folder: str, *, top_level_only: bool = False) -> dict[str, set[str]]:
    """file -> the modules it imports: at any depth (function-level imports count too), or only those run when
    the module is imported (``top_level_only``: module body, not under ``if TYPE_CHECKING``)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).glob("*.py")):
        names: set[str] = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = tree.body if top_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        found[f"{folder}/{path.name}"] = names
    return found


def offenders(folder: str, forbidden: tuple[str, ...], *, top_level_only: bool = False) -> list[str]:
    return [
        f"{file} imports {name}"
        for file, names in imported_modules(folder, top_level_only=top_level_only).items()
        for name in sorted(names)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
    ]


def test_the_producer_imports_nothing_from_the_worker() -> None:
    assert offenders("producer", ("lookalike.worker",)) == []


def test_the_worker_imports_nothing_from_the_producer() -> None:
    assert offenders("worker", ("lookalike.producer",)) == []


def test_shared_state_imports_neither_side() -> None:
    assert offenders("state", ("lookalike.worker", "lookalike.producer", "lookalike.commands", "lookalike.main")) == []


def test_importing_shared_state_loads_nothing_heavy() -> None:
    """numpy is imported inside the two functions that turn vectors into arrays, never when a module loads."""
    assert offenders("state", HEAVY, top_level_only=True) == []


def test_the_rule_checker_sees_a_forbidden_import(tmp_path: Path, monkeypatch) -> None:
    """The checks above would pass on an empty result: show they catch a function-level import."""
    (tmp_path / "producer").mkdir()
    (tmp_path / "producer" / "bad.py").write_text("def f():\n    from lookalike.worker.tasks import fetch\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert offenders("producer", ("lookalike.worker",)) == ["producer/bad.py imports lookalike.worker.tasks"]


def test_publishing_a_change_event_loads_no_image_model_http_or_celery_code(env: dict[str, str]) -> None:
    script = f"""
import json, sys
from lookalike.producer.events import publish_event
entry = publish_event({{"type": "product.deleted", "version": 7, "product_id": "sku-1"}})
heavy = sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY!r})
print(json.dumps({{"entry": entry, "heavy": heavy}}))
"""
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["entry"], "the event was published"
    assert result["heavy"] == []


def test_sending_work_to_the_workers_loads_no_image_model_http_or_store_code(env: dict[str, str]) -> None:
    """The CLI and the API send tasks by name: they never import the tasks module and the worker behind it."""
    script = f"""
import json, sys
from lookalike.state.messages import Job
from lookalike.state.search import SearchRequest
from lookalike.worker.app import app
from lookalike.app.gateway import CeleryPublisher, live_workers
from lookalike.state.connection import redis_client
from lookalike.config.settings import get_settings
publisher = CeleryPublisher(app, redis_client(get_settings()))
publisher.publish_jobs([Job(run_id="r", product_id="p", image_url="http://127.0.0.1:1/x.jpg", version=1)])
live_workers(app)
SearchRequest(text="red shoes").validate()
heavy = sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY!r} and not name.startswith("celery"))
print(json.dumps({{"heavy": heavy, "tasks": "lookalike.worker.tasks" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"heavy": [], "tasks": False}
