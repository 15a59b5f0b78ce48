"""The packages' import rules, read from the source with `ast`: outside `buffer/`, the buffer is used through
the names `buffer/__init__.py` exports; `buffer` imports neither `agent` nor `orchestrator`, `agent` never
imports `orchestrator`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import buffer

REPO = Path(__file__).resolve().parents[1]
# the benchmark of the buffer's own parts (the codec and the batch planner), not a user of the buffer
INTERNAL_USERS = {"bench/bench_buffer.py", "bench/buffer_workload.py"}
FORBIDDEN = {"buffer": ("agent", "orchestrator"), "agent": ("orchestrator",)}


def imports(path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names imported from it) of every absolute import in a file, nested ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, tuple(a.name for a in node.names)))
    return out


def sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", sources("orchestrator", "agent", "bench"), ids=lambda p: str(p.relative_to(REPO)))
def test_outside_the_buffer_only_its_public_names_are_imported(path: Path) -> None:
    rel = str(path.relative_to(REPO))
    if rel in INTERNAL_USERS:
        return
    bad = [f"{rel}:{line}: {mod}" for line, mod, names in imports(path) if mod.startswith("buffer.")]
    bad += [f"{rel}:{line}: buffer.{n} is not in buffer.__all__" for line, mod, names in imports(path)
            if mod == "buffer" for n in names if n not in buffer.__all__]
    assert not bad, "import the buffer's public names from `buffer` (buffer/__init__.py) instead:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_in_one_direction(package: str) -> None:
    bad = [f"{p.relative_to(REPO)}:{line}: {mod}" for p in sources(package) for line, mod, _ in imports(p)
           if mod.split(".")[0] in FORBIDDEN[package]]
    assert not bad, f"{package} must not import {FORBIDDEN[package]}:\n" + "\n".join(bad)


def test_the_rule_finds_a_submodule_import(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("def g():\n    from buffer.durable import Durable\n    import buffer.codec\n")
    assert [(line, mod) for line, mod, _ in imports(f)] == [(2, "buffer.durable"), (3, "buffer.codec")]
