"""Who may import whom, exactly as ../shared/ARCHITECTURE.md states it (the picture stays one-directional):

    bench/cli.py, bench/reproduce.py  -> anything; nothing imports them
    evaluate/, baselines/             -> the common ground, pretrain.alexnet, results.store, and
                                         evaluate's readers (datasets, backbone); nothing else
    pretrain/, results/               -> the common ground only
    the common ground (bench/ minus cli, reproduce) -> no other project package
"""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GROUND = "cpfs_bench.bench"
READERS = ("cpfs_bench.evaluate.datasets", "cpfs_bench.evaluate.backbone")
# package -> the cpfs_bench modules (or packages) it may import besides its own
ALLOWED = {
    "bench": (GROUND,),
    "pretrain": (GROUND,),
    "results": (GROUND,),
    "evaluate": (GROUND, "cpfs_bench.pretrain.alexnet", "cpfs_bench.results.store"),
    "baselines": (GROUND, "cpfs_bench.pretrain.alexnet", "cpfs_bench.results.store") + READERS,
}
ANYTHING = (REPO / "bench" / "cli.py", REPO / "bench" / "reproduce.py")


def project_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cpfs_bench"):
            names.add(node.module)
            # `from cpfs_bench.evaluate import voc07_cls` imports a module too
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("cpfs_bench")}
    return names


def layering_violations(package: str, allowed, paths) -> list[str]:
    wrong = []
    for path in paths:
        for name in sorted(project_imports(path)):
            own = name == f"cpfs_bench.{package}" or name.startswith(f"cpfs_bench.{package}.")
            parent = any(a.startswith(name + ".") for a in allowed)  # `from cpfs_bench.pretrain import alexnet`
            if not own and not parent and not any(name == a or name.startswith(a + ".") for a in allowed):
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
    return wrong


def test_imports_follow_the_architecture():
    wrong = []
    for package, allowed in ALLOWED.items():
        paths = [p for p in sorted((REPO / package).rglob("*.py")) if p not in ANYTHING]
        wrong += layering_violations(package, allowed, paths)
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_a_wrong_import(tmp_path):
    """The checker itself: an evaluation importing results.plots, or the ground importing pretrain, is caught."""
    bad = REPO / "evaluate" / "_layout_probe.py"  # inside the package, so relative_to(REPO) works
    try:
        bad.write_text("from cpfs_bench.results.plots import plot_linear_probes\n"
                       "from cpfs_bench.pretrain import alexnet\n"
                       "from cpfs_bench.evaluate.backbone import load_trunk\n")
        assert layering_violations("evaluate", ALLOWED["evaluate"], [bad]) == [
            "evaluate/_layout_probe.py imports cpfs_bench.results.plots",
            "evaluate/_layout_probe.py imports cpfs_bench.results.plots.plot_linear_probes"]
        assert layering_violations("bench", ALLOWED["bench"], [bad]) == [
            "evaluate/_layout_probe.py imports cpfs_bench.evaluate.backbone",
            "evaluate/_layout_probe.py imports cpfs_bench.evaluate.backbone.load_trunk",
            "evaluate/_layout_probe.py imports cpfs_bench.pretrain",
            "evaluate/_layout_probe.py imports cpfs_bench.pretrain.alexnet",
            "evaluate/_layout_probe.py imports cpfs_bench.results.plots",
            "evaluate/_layout_probe.py imports cpfs_bench.results.plots.plot_linear_probes"]
    finally:
        bad.unlink()


def test_nothing_imports_the_command_line_or_reproduce():
    users = [p for p in REPO.glob("*/**/*.py") if p.parts[-2] != "tests" and p not in ANYTHING
             and any(n.startswith(("cpfs_bench.bench.cli", "cpfs_bench.bench.reproduce")) for n in project_imports(p))]
    assert not users
