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
    for path in sorted((ROOT / folder).rglob("*.py")):
        names: set[str] = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = tree.body if top_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        found[f"{folder}/{path.relative_to(ROOT / folder)}"] = names
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


def test_the_rule_checker_reads_sub_packages(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "worker" / "store").mkdir(parents=True)
    (tmp_path / "worker" / "store" / "bad.py").write_text("from lookalike.producer.sync import plan_upserts\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert offenders("worker", ("lookalike.producer",)) == ["worker/store/bad.py imports lookalike.producer.sync"]


def test_each_store_engine_is_a_small_module_that_shares_only_the_base() -> None:
    """The engine-neutral logic lives in worker/store/base.py; an engine is its primitives (see that module)."""
    imports = imported_modules("worker")
    for engine, other in (("edge", "client"), ("client", "edge")):
        lines = len((ROOT / "worker" / "store" / f"{engine}.py").read_text().splitlines())
        assert lines < 400, f"worker/store/{engine}.py has {lines} lines"
        assert f"lookalike.worker.store.{other}" not in imports[f"worker/store/{engine}.py"]
        assert "lookalike.worker.store.base" in imports[f"worker/store/{engine}.py"]


def longest_functions(folder: str, limit: int) -> list[str]:
    """Functions (and methods) of ``folder`` longer than ``limit`` lines, decorators and docstrings included."""
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - first + 1
                if length > limit:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {length} lines")
    return found


def test_no_function_in_the_worker_is_longer_than_80_lines() -> None:
    assert longest_functions("worker", 80) == []


def test_the_length_check_sees_a_long_function(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "long.py").write_text("def f():\n" + "    x = 1\n" * 80)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert longest_functions("worker", 80) == ["worker/long.py:1 f has 81 lines"]


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
