"""The public namespaces: one installed import name, ``__all__`` sorted, complete, each name
exported once, documented, and reporting the namespace users import it from."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import typing
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

NAMESPACES = [
    "actorlog",
    "actorlog.storage",
    "actorlog.lowlevel",
    "actorlog.testing",
    "actorlog.otel",
]
ROOT = Path(__file__).resolve().parent.parent

# The implementation packages, and the names of theirs that no namespace exports on purpose:
# helpers the engine's own tests use (``actorlog.engine.testing``) and the kits' step types.
INTERNAL_PACKAGES = ["actorlog.engine", "actorlog.actors"]


def _load(name: str) -> ModuleType:
    return importlib.import_module(name)


@pytest.mark.parametrize("name", NAMESPACES)
def test_all_is_sorted_and_unique(name: str) -> None:
    exported = list(_load(name).__all__)
    assert exported == sorted(exported)
    assert len(exported) == len(set(exported))


@pytest.mark.parametrize("name", NAMESPACES)
def test_every_exported_name_exists_and_has_a_docstring(name: str) -> None:
    module = _load(name)
    assert module.__doc__
    for attr in module.__all__:
        value = getattr(module, attr)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__doc__, f"{name}.{attr} has no docstring"


@pytest.mark.parametrize("name", NAMESPACES)
def test_public_names_report_their_namespace(name: str) -> None:
    """Tracebacks and reprs say ``actorlog.Rejected``, not the private module."""
    module = _load(name)
    for attr in module.__all__:
        value = getattr(module, attr)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__ == name, f"{name}.{attr} reports {value.__module__}"


def test_each_name_is_exported_by_one_namespace() -> None:
    seen: dict[str, str] = {}
    for name in NAMESPACES:
        for attr in _load(name).__all__:
            assert attr not in seen, f"{attr} is in both {seen[attr]} and {name}"
            seen[attr] = name


def test_every_name_the_implementation_exports_is_public_somewhere() -> None:
    """Nothing the engine and actors packages export is left unreachable by accident."""
    public = {attr for name in NAMESPACES for attr in _load(name).__all__}
    for package in INTERNAL_PACKAGES:
        missing = set(_load(package).__all__) - public
        assert not missing, f"{package} exports {sorted(missing)}, which no namespace does"


def test_an_application_needs_one_import_line() -> None:
    import actorlog

    for attr in ("Engine", "Aggregate", "Projector", "handles", "applies", "Rejected"):
        assert attr in actorlog.__all__
    for attr in ("Recorded", "Committed", "EngineError", "InvalidArgument"):
        assert attr in actorlog.__all__
    for attr in ("upcaster", "UpcastError"):  # evolving events is an application's job
        assert attr in actorlog.__all__
    # Plumbing for backend authors and builders stays one level down.
    for attr in ("Writer", "Append", "StoredEvent", "EventRegistry", "ANY", "LmdbEventLog"):
        assert attr not in actorlog.__all__


def test_a_host_on_lmdb_never_loads_the_postgresql_log() -> None:
    # psycopg and the PostgreSQL log load on first use (~70 ms of ~300 of importing
    # actorlog): an engine on LMDB, its storage namespace included, never imports them;
    # naming PostgresEventLog does, and it reports the public namespace.
    code = (
        "import sys, trio, tempfile, actorlog, actorlog.storage\n"
        "async def main():\n"
        "    with tempfile.TemporaryDirectory() as d:\n"
        "        async with actorlog.Engine.open(d, aggregates=[]):\n"
        "            pass\n"
        "trio.run(main)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('psycopg') or 'postgres' in m)\n"
        "assert not loaded, loaded\n"
        "from actorlog.storage import PostgresEventLog\n"
        "assert PostgresEventLog.__module__ == 'actorlog.storage'\n"
        "assert actorlog.storage.PostgresEventLog is PostgresEventLog\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_kits_give_old_events_from_the_testing_namespace() -> None:
    import actorlog.testing

    for attr in ("old_event", "OldEvent"):
        assert attr in actorlog.testing.__all__


@pytest.mark.parametrize("name", NAMESPACES)
def test_annotations_of_public_classes_resolve(name: str) -> None:
    """A class published under another module must still resolve its own annotations:
    typing looks them up in the module ``__module__`` names."""
    module = _load(name)
    for attr in module.__all__:
        value = getattr(module, attr)
        if inspect.isclass(value):
            typing.get_type_hints(value)


def test_the_wheel_installs_one_top_level_name(tmp_path: Path) -> None:
    """``pip install .`` adds ``actorlog`` and nothing else: no ``engine``, ``actors``,
    ``benchmarks`` or ``tests`` squatting in the host's site-packages."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("actorlog-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"actorlog"}
    assert "actorlog/engine/_engine.py" in names and "actorlog/actors/_aggregate.py" in names
    assert "actorlog/py.typed" in names
    assert not any(n.startswith(("actorlog/tests", "actorlog/benchmarks")) for n in names)
