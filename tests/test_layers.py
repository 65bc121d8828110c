"""The package's layering (ARCHITECTURE.md): lower layers never import upper ones."""

import ast
from pathlib import Path

import auglens

ROOT = Path(auglens.__file__).parent
UPPER = {"explain", "metrics", "analysis", "report", "pipeline", "cli"}
RULES = {  # package or module -> the auglens top-level names it must not import
    "config": UPPER, "schemas": UPPER, "registry": UPPER, "utils": UPPER, "stats": UPPER,
    "data": UPPER, "models": UPPER, "augment": UPPER,
    "train": UPPER,
    "explain": UPPER - {"explain"},
    "metrics": UPPER - {"metrics"},
    "analysis": {"report", "pipeline", "cli"},
    "report": {"pipeline", "cli"},
}


def _imported_tops(path: Path) -> set[str]:
    """The top-level auglens names a module imports (absolute or relative, also in functions)."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    package = rel[:-1] if path.name != "__init__.py" else rel[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "auglens":
                    continue
                target = parts[1:]
            else:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *((node.module or "").split(".") if node.module else [])]
            names = [a.name for a in node.names]
            out.add(target[0] if target else names[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "auglens" and len(parts) > 1:
                    out.add(parts[1])
    return out


def test_lower_layers_import_no_upper_layer():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        top = path.relative_to(ROOT).parts[0].removesuffix(".py")
        forbidden = RULES.get(top, set())
        hit = _imported_tops(path) & forbidden
        if hit:
            bad.append(f"{path.relative_to(ROOT)} imports {sorted(hit)}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_relative_and_absolute_imports(tmp_path):
    pkg = ROOT / "metrics"
    assert "explain" not in _imported_tops(pkg / "road.py")
    assert "models" in _imported_tops(pkg / "road.py")  # from ..models.tap import …
    assert "errors" in _imported_tops(pkg / "road.py")
