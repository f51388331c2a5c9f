"""The package layout's rules, checked on the source.

Shared state is its own package; the producer and the worker never import each other; the layers import
downwards only (config <- state <- {producer, worker} <- app <- {api, cli}); the two adapters (cli, api) import
no Celery and no store engine and reach the workers only through the application's gateway, the one module
that sends a task; task names and a run's states are written in one module each; nothing rewrites the
environment at run time; every outage is an ``Unavailable``, mapped by one table per adapter; no product
function is over 80 lines; and publishing one change event stays light.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert offenders("state", ("lookalike.worker", "lookalike.producer", "lookalike.app", "lookalike.cli")) == []


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


# ------------------------------------------------------------------------------------------------ layering
# Every folder of product code (installed under lookalike.*), and the root package itself.
PRODUCT_FOLDERS = ("lookalike", "config", "state", "producer", "worker", "worker/store", "app", "api", "cli", "testing")
ADAPTERS = ("cli", "api")
# Folder -> the lookalike packages it must not import: each layer imports downwards only.
LAYERS = {
    "config": ("lookalike.state", "lookalike.producer", "lookalike.worker", "lookalike.app", "lookalike.api",
               "lookalike.cli"),
    "state": ("lookalike.producer", "lookalike.worker", "lookalike.app", "lookalike.api", "lookalike.cli"),
    "producer": ("lookalike.worker", "lookalike.app", "lookalike.api", "lookalike.cli"),
    "worker": ("lookalike.producer", "lookalike.app", "lookalike.api", "lookalike.cli"),
    "worker/store": ("lookalike.producer", "lookalike.app", "lookalike.api", "lookalike.cli"),
    "app": ("lookalike.api", "lookalike.cli"),
    "api": ("lookalike.cli",),
}  # fmt: skip
# What an adapter never imports: Celery and its transport, a store engine, or the worker's parts that decide
# where work runs (the gateway in lookalike.app does).
ADAPTER_FORBIDDEN = (
    "celery",
    "kombu",
    "qdrant_client",
    "qdrant_edge",
    "lookalike.worker.store",
    "lookalike.worker.app",
    "lookalike.worker.tasks",
    "lookalike.worker.pipeline",
    "lookalike.worker.runner",
)


def test_each_layer_imports_downwards_only() -> None:
    found = [offence for folder, forbidden in LAYERS.items() for offence in offenders(folder, forbidden)]
    assert found == []


def test_the_adapters_import_no_celery_no_store_engine_and_no_worker_internals() -> None:
    assert [offence for folder in ADAPTERS for offence in offenders(folder, ADAPTER_FORBIDDEN)] == []


def test_the_root_package_holds_the_version_and_the_cli_is_not_the_root() -> None:
    import lookalike
    import lookalike.cli.main

    assert lookalike.__version__
    assert Path(lookalike.__file__).parent.name == "lookalike", "the root is its own folder, not cli/"
    assert "main" not in vars(lookalike) and "commands" not in vars(lookalike)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'lookalike = "lookalike.cli.main:main"' in pyproject


# ---------------------------------------------------------------------------------------------- AST rules
def product_files(folders: tuple[str, ...] = PRODUCT_FOLDERS) -> dict[str, ast.Module]:
    return {
        f"{folder}/{path.name}": ast.parse(path.read_text(), filename=str(path))
        for folder in folders
        for path in sorted((ROOT / folder).glob("*.py"))
    }


def calls_to(attribute: str, trees: dict[str, ast.Module]) -> list[str]:
    """``file:line`` of every call of a method named ``attribute`` (``x.send_task(...)``)."""
    return [
        f"{file}:{node.lineno}"
        for file, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute
    ]


def test_no_module_but_the_gateway_sends_a_task() -> None:
    """The gateway decides how work reaches the workers (``send_task``, and the chains it builds); inside the
    worker only the tasks module hands a stage's output to the next stage (fetch -> embed -> index)."""
    trees = product_files()
    senders = {file.split(":")[0] for file in calls_to("send_task", trees)}
    assert senders == {"app/gateway.py"}
    # apply_async/delay: the gateway's own chains (encode -> search), and the worker's stage hand-offs.
    hand_offs = {file.split(":")[0] for name in ("apply_async", "delay") for file in calls_to(name, trees)}
    assert hand_offs <= {"app/gateway.py", "worker/tasks.py"}


def string_constants(trees: dict[str, ast.Module]) -> list[tuple[str, int, str]]:
    return [
        (file, node.lineno, node.value)
        for file, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_task_names_are_written_only_in_the_task_constants_module() -> None:
    """Decorators, routes and sends all use lookalike.state.tasks (queue names that equal a task name are the
    queue constants in state/queues.py)."""
    from lookalike.state.tasks import TASK_QUEUES

    written = [
        f"{file}:{line} {value}"
        for file, line, value in string_constants(product_files())
        if value in TASK_QUEUES and file not in ("state/tasks.py", "state/queues.py")
    ]
    assert written == []
    trees = product_files(("worker",))
    task_names = [
        keyword.value
        for tree in trees.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "task"
        for keyword in node.keywords
        if keyword.arg == "name"
    ]
    assert len(task_names) == len(TASK_QUEUES)
    assert all(isinstance(name, ast.Name) and name.id.endswith("_TASK") for name in task_names)


def status_literals(trees: dict[str, ast.Module]) -> list[str]:
    """Places that write or compare a run's status as a literal: ``status="..."``, ``{"status": "..."}``,
    ``run.get("status") == "..."``, and the one status that is never a counter name, ``"enqueuing"``."""
    from lookalike.state.runs import Status

    values = {status.value for status in Status}

    def literal(node: ast.AST | None) -> bool:
        return isinstance(node, ast.Constant) and node.value in values

    def names_status(node: ast.AST) -> bool:
        return any(isinstance(part, ast.Constant) and part.value == "status" for part in ast.walk(node))

    found = []
    for file, tree in trees.items():
        for node in ast.walk(tree):
            hit = (
                (isinstance(node, ast.keyword) and node.arg == "status" and literal(node.value))
                or (isinstance(node, ast.Dict) and any(
                    isinstance(key, ast.Constant) and key.value == "status" and literal(value)
                    for key, value in zip(node.keys, node.values, strict=True)
                ))
                or (isinstance(node, ast.Compare) and names_status(node) and any(
                    literal(side) for side in [node.left, *node.comparators]
                ))
                or (isinstance(node, ast.Constant) and node.value == Status.ENQUEUING.value)
            )  # fmt: skip
            if hit:
                found.append(f"{file}:{getattr(node, 'lineno', '?')}")
    return sorted(found)


def test_no_run_status_is_written_as_a_literal_outside_the_runs_module() -> None:
    trees = product_files()
    del trees["state/runs.py"]
    assert status_literals(trees) == []


def rewrites_environment(node: ast.AST) -> bool:
    """``os.environ[...] = ...``, ``os.environ.update(...)`` (any method but ``get``), ``os.putenv(...)``, or a
    call of ``reset_settings``."""
    if isinstance(node, ast.Assign | ast.AugAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(ast.unparse(target).startswith("os.environ[") for target in targets)
    if not isinstance(node, ast.Call):
        return False
    called = ast.unparse(node.func)
    writes_environ = (
        isinstance(node.func, ast.Attribute)
        and ast.unparse(node.func.value) == "os.environ"
        and node.func.attr not in ("get", "items", "keys", "values", "copy")
    )
    return writes_environ or called.endswith("putenv") or called.endswith("reset_settings")


def test_nothing_rewrites_the_environment_or_resets_the_settings_at_run_time() -> None:
    """The broker a command resolved is a value passed down: nothing writes this process's environment, and
    nobody but the tests resets the settings."""
    found = [
        f"{file}:{node.lineno} {ast.unparse(node)}"
        for file, tree in product_files().items()
        for node in ast.walk(tree)
        if rewrites_environment(node)
    ]
    assert found == []


def test_no_error_is_classified_by_its_message_text_or_caught_as_a_bare_runtime_error() -> None:
    """Inside ``except`` of one of lookalike's own errors nothing tests ``... in str(exc)`` (the error's type
    says what it is), and no adapter or application module catches ``RuntimeError`` as such."""
    import lookalike.state.errors as errors
    from lookalike.state.search import QueryRejected

    own = {name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, Exception)}
    own.add(QueryRejected.__name__)
    by_text, bare = [], []
    for file, tree in product_files().items():
        for handler in (node for node in ast.walk(tree) if isinstance(node, ast.ExceptHandler)):
            names = ast.walk(handler.type) if handler.type else ()
            caught = {part.id for part in names if isinstance(part, ast.Name)}
            if caught & own and any(
                isinstance(node, ast.Compare) and "str(" in ast.unparse(node) and " in " in f" {ast.unparse(node)} "
                for statement in handler.body
                for node in ast.walk(statement)
            ):
                by_text.append(f"{file}:{handler.lineno}")
            if "RuntimeError" in caught and file.split("/")[0] in (*ADAPTERS, "app"):
                bare.append(f"{file}:{handler.lineno}")
    assert by_text == [] and bare == []


# Every product folder (PRODUCT_FOLDERS) is held to MAX_FUNCTION_LINES; worker/ too, now that its long functions
# are split (issue 19, the `engines` half).
MAX_FUNCTION_LINES = 80
LENGTH_CHECKED = PRODUCT_FOLDERS


def long_functions(trees: dict[str, ast.Module]) -> list[str]:
    return [
        f"{file}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for file, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_no_product_function_is_over_80_lines() -> None:
    assert long_functions(product_files(LENGTH_CHECKED)) == []


def test_the_rule_checkers_see_what_they_forbid(tmp_path: Path, monkeypatch) -> None:
    """Each AST rule above would pass on an empty result: show each one finds its offence."""
    bad = """
import os
def send(app, ledger, run):
    app.send_task("lookalike.audit")
    os.environ["LOOKALIKE_BROKER_URL"] = "redis://x"
    ledger.start_run("ingest", "x", status="enqueuing")
    if run.get("status") == "enqueued":
        pass
    try:
        pass
    except StoreError as exc:
        if "lookalike reindex" in str(exc):
            pass
""" + "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    trees = {"app/bad.py": ast.parse(bad)}
    assert calls_to("send_task", trees) == ["app/bad.py:4"]
    assert [value for _f, _l, value in string_constants(trees) if value == "lookalike.audit"] == ["lookalike.audit"]
    assert status_literals(trees) == ["app/bad.py:6", "app/bad.py:6", "app/bad.py:7"]
    assert long_functions(trees) == [f"app/bad.py:3 send ({MAX_FUNCTION_LINES + 11} lines)"]
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "bad.py").write_text(bad)
    for folder in PRODUCT_FOLDERS:
        (tmp_path / folder).mkdir(exist_ok=True)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError):
        test_nothing_rewrites_the_environment_or_resets_the_settings_at_run_time()
    with pytest.raises(AssertionError):
        test_no_error_is_classified_by_its_message_text_or_caught_as_a_bare_runtime_error()


# ------------------------------------------------------------------------------------------------- errors
def test_every_outage_is_an_unavailable_and_each_adapter_maps_them_with_its_one_table() -> None:
    from lookalike.api.errors import api_error
    from lookalike.cli.main import exit_code
    from lookalike.state import errors
    from lookalike.worker import embed, store

    outages = [
        errors.StoreUnavailable,
        errors.StoreLocked,
        errors.ModelUnavailable,
        errors.BrokerUnavailable,
        errors.BrokerUnreachable,
        errors.BackendUnavailable,
        errors.BackendTimeout,
    ]
    assert all(issubclass(outage, errors.Unavailable) for outage in outages)
    # The engines raise the shared types themselves (not look-alikes).
    assert store.StoreUnavailable is errors.StoreUnavailable
    assert embed.ModelUnavailable is errors.ModelUnavailable
    for outage in outages:
        raised = outage("down")
        assert exit_code(raised) == 3, outage
        answer = api_error(raised)
        assert answer is not None and answer.status == (504 if outage is errors.BackendTimeout else 503), outage
        assert answer.status == 504 or answer.headers["Retry-After"] == "5"
    assert exit_code(errors.Misconfigured("x")) == 2 and exit_code(errors.Rejected("bad", "x")) == 2
    refused = api_error(errors.Rejected("unknown_product", "no such product"))
    assert refused is not None and (refused.status, refused.reason) == (404, "unknown_product")
    assert exit_code(RuntimeError("a bug")) is None and api_error(RuntimeError("a bug")) is None


def test_the_gateway_is_the_apis_search_backend_and_the_cli_searches_through_it() -> None:
    from lookalike.api.backend import SearchBackend
    from lookalike.app.gateway import Gateway
    from lookalike.config.settings import Settings

    assert isinstance(Gateway(Settings(_env_file=None)), SearchBackend)
    cli = (ROOT / "cli" / "main.py").read_text()
    assert "gateway.search(" in cli and "answer_query" not in cli
