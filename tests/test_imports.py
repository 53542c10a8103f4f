"""The project's modules import each other without a cycle (every import counts, lazy ones in functions too,
except those in the `main()` of a file that is also a program: they run only in that program's own process,
e.g. the math worker's child), and nothing imports train.py, the entry point: a reader can take the files in
dependency order."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def import_graph() -> dict[str, set[str]]:
    mods = {p.stem: p for p in ROOT.glob("*.py")}
    graph = {}
    for name, path in mods.items():
        deps, tree = set(), ast.parse(path.read_text())
        program = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "main"
                   for n in ast.walk(f)} if "__main__" in path.read_text() else set()
        for node in ast.walk(tree):
            if id(node) in program:
                continue
            if isinstance(node, ast.Import):
                deps |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                deps.add(node.module.split(".")[0])
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        state[n] = "done"
        stack.pop()
        return None
    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycle_and_nothing_imports_the_entry_point():
    graph = import_graph()
    assert {"infuser", "train", "plan", "dugrpo", "influence"} <= graph.keys()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    importers = sorted(n for n, deps in graph.items() if "train" in deps and n != "bench")
    assert importers == [], importers       # bench.py times train.main end to end: a leaf, imported by no one
    assert not any("bench" in deps for deps in graph.values())


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_loop_loads_no_bookkeeping():
    """`import infuser` loads the algorithm and its records only: the metrics (diagnostics.py), the logs, the
    math worker's client and the benchmarks stay out of the loop's reading path, and it stays at most 1,800
    lines, the size a reviewer set for reading the algorithm in one sitting."""
    import subprocess
    import sys
    code = ("import os, sys; before = set(sys.modules); import infuser; "
            "print(sorted(m for m in set(sys.modules) - before if os.path.isfile(m + '.py')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    mods = eval(out.stdout.strip().splitlines()[-1])
    assert set(mods) == {"infuser", "dugrpo", "influence", "dist", "grading", "questions", "records"}, mods
    lines = {m: len((ROOT / f"{m}.py").read_text().splitlines()) for m in mods}
    assert sum(lines.values()) <= 1800, lines
