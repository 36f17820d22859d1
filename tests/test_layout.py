"""Who may import whom (shared/ARCHITECTURE.md): the picture stays one-directional."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# package -> the cpfs_bench modules (or packages) it may import besides its own
ALLOWED = {
    "bench": ("cpfs_bench.bench",),  # the common ground imports no other project package (cli.py aside)
    "pretrain": ("cpfs_bench.bench",),
    "results": ("cpfs_bench.bench",),
    "evaluate": ("cpfs_bench.bench", "cpfs_bench.pretrain.alexnet", "cpfs_bench.results.store",
                 "cpfs_bench.results.plots"),
    "baselines": ("cpfs_bench.bench", "cpfs_bench.pretrain.alexnet", "cpfs_bench.results.store",
                  "cpfs_bench.evaluate"),
}


def project_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cpfs_bench"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("cpfs_bench")}
    return names


def test_imports_follow_the_architecture():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "bench" / "cli.py":
                continue  # the command line may import anything; nothing imports it
            for name in project_imports(path):
                own = name == f"cpfs_bench.{package}" or name.startswith(f"cpfs_bench.{package}.")
                if not own and not any(name == a or name.startswith(a + ".") for a in allowed):
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_command_line():
    users = [p for p in REPO.glob("*/**/*.py") if p.parts[-2] != "tests" and p.name != "cli.py"
             and any(n.startswith("cpfs_bench.bench.cli") for n in project_imports(p))]
    assert not users
