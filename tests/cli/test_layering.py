"""Library code never imports the command lines (`ffjax.cli`, or the `python -m` shims
that run it); a module that is both a library and a `-m` entry point imports the CLI only
under `if __name__ == "__main__":`."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The `python -m ffjax.<command>` modules that hold nothing but the call of their CLI.
SHIMS = {"ffjax/train.py", "ffjax/export.py", "ffjax/convert.py"}
CLI_MODULES = ("ffjax.cli", *(s.removesuffix(".py").replace("/", ".") for s in SHIMS))


def _is_main_guard(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        and any(
            isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators
        )
    )


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return []


def cli_imports(source: str) -> list[str]:
    """The CLI modules `source` imports outside an `if __name__ == "__main__":` block."""
    found = []

    def visit(node: ast.AST) -> None:
        if _is_main_guard(node):
            return
        found.extend(
            m for m in _imported(node) if any(m == c or m.startswith(c + ".") for c in CLI_MODULES)
        )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def test_the_checker_sees_imports_at_any_depth_but_not_under_the_main_guard():
    assert cli_imports("from ffjax.cli import common") == ["ffjax.cli", "ffjax.cli.common"]
    assert cli_imports("def f():\n    import ffjax.cli.train\n") == ["ffjax.cli.train"]
    assert cli_imports("from ffjax import train as t\n") == ["ffjax.train"]
    assert cli_imports("from ffjax import trainer, configs\n") == []
    assert cli_imports('if __name__ == "__main__":\n    from ffjax.cli import export\n') == []


def test_library_modules_never_import_a_cli():
    bad = {}
    for path in sorted((ROOT / "ffjax").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("ffjax/cli/") or rel in SHIMS:
            continue
        found = cli_imports(path.read_text())
        if found:
            bad[rel] = found
    assert not bad, f"library modules import a CLI: {bad}"


def test_shims_hold_only_the_call_of_their_cli():
    for rel in sorted(SHIMS):
        tree = ast.parse((ROOT / rel).read_text())
        for node in tree.body:
            doc = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            names = isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__all__"]
            imports = isinstance(node, ast.ImportFrom) and node.module.startswith("ffjax.cli")
            assert doc or names or imports or _is_main_guard(node), (rel, ast.dump(node)[:80])
