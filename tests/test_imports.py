"""The project's modules import each other without a cycle (every import counts, lazy ones in functions too),
and nothing imports train.py, the entry point: a reader can take the files in dependency order."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def import_graph() -> dict[str, set[str]]:
    mods = {p.stem: p for p in ROOT.glob("*.py")}
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
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
