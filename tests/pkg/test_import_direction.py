"""Dependencies point one way (README, "Layout"): every import of every product module, parsed
with ``ast`` (nested imports included), must follow the allowed edges below."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# folder at the repository root -> the subpackage of ``crystalline`` it holds ("" is the root)
FOLDERS = {"pkg": "", "shm": "shm", "tokens": "tokens", "crawler": "crawler", "ingest": "ingest",
           "workers": "workers", "daemon": "daemon"}  # fmt: skip
# what each part may import of ours; "" is the root package's own modules (durable, documents, ...)
ALLOWED = {
    "": {""},
    "shm": set(),
    "tokens": {""},
    "crawler": {""},
    "ingest": {"", "tokens"},
    "workers": {"", "shm", "tokens"},
    "daemon": {"", "shm", "tokens", "crawler", "ingest", "workers"},
}


def _part(module: str) -> str | None:
    """The part a ``crystalline...`` module belongs to (None: not ours)."""
    names = module.split(".")
    if names[0] != "crystalline":
        return None
    return names[1] if len(names) > 1 and names[1] in ALLOWED and names[1] != "" else ""


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, a module of ``package``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from crystalline import documents`` names a module of the root package
            if module == "crystalline":
                found += [(node.lineno, f"crystalline.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, module))
    return found


def edges() -> list[tuple[str, int, str, str]]:
    """(file, line, importing part, imported part) for every import of ours."""
    out = []
    for folder, part in FOLDERS.items():
        package = "crystalline" + (f".{part}" if part else "")
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, module in _imports(path, package):
                target = _part(module)
                if target is not None and target != part:
                    out.append((str(path.relative_to(ROOT)), line, part, target))
    return out


def test_dependencies_point_one_way() -> None:
    forbidden = [
        f"{file}:{line}: {part or 'crystalline'} imports {target or 'crystalline'}"
        for file, line, part, target in edges()
        if target not in ALLOWED[part]
    ]
    assert forbidden == []


def test_the_check_sees_relative_nested_and_root_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text(
        "from ..ingest.document import Document\n"
        "def f():\n    from crystalline.workers import engine\n"
        "from .. import durable\nimport crystalline.daemon.cli\n",
        encoding="utf-8",
    )
    found = [module for _, module in _imports(sample, "crystalline.crawler")]
    assert found == ["crystalline.ingest.document", "crystalline.durable", "crystalline.daemon.cli",
                     "crystalline.workers"]  # fmt: skip
    assert [_part(m) for m in found] == ["ingest", "", "daemon", "workers"]
