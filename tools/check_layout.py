"""Check the package layout limits: no import circle, at most 5 floors, no file over 450
lines, no function over 80 lines.

Every import counts, function-level ones too. An import of ``a.b`` is an edge to module
``a.b`` (``from a import b`` to ``a.b`` when ``b`` is a module, else to ``a``).

* Circles are looked for between modules, and between parts.
* Floors are counted between *parts*: a sub-package (``kdnas.distill``, ``search_spaces``) is
  one part, a top-level module (``kdnas.cost``) is one part. A part's floor is 1 + the
  highest floor among the parts it imports (1 when it imports none). ``__main__`` modules
  are entry points that nothing imports, and are left out.
* Optuna's private names (``study._storage``, ``optuna._hypervolume``, ...) appear only in
  ``kdnas/optuna_internals.py``, whose test fails when Optuna changes one of them.
* A parser table may be longer than 80 lines if its ``def`` line says ``# layout: table``.
* The experiments (``benchmarks/``, a package run as ``python -m benchmarks.NAME``) sit above
  the product: no product module imports them, they have no import circle, no experiment
  imports another's private (``_``) names, and their limits are looser, because a protocol's
  runner keeps its whole protocol in one file and its ``main`` reads straight down: files up
  to 600 lines, functions up to 130. Their floors are not counted (the product's are).

    python tools/check_layout.py            # prints the figures, exits 1 if a limit is broken
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kdnas", "search_spaces")
EXPERIMENTS = "benchmarks"
LIMITS = {"floors": 5, "file_lines": 450, "function_lines": 80}
EXPERIMENT_LIMITS = {"file_lines": 600, "function_lines": 130}


def modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Module name -> file, for every .py file of the given packages."""
    out = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules that module ``name`` imports anywhere in its file."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                target = _resolve(a.name, mods)
                if target:
                    out.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name if is_pkg else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            for a in node.names:
                target = f"{base}.{a.name}" if f"{base}.{a.name}" in mods else _resolve(base, mods)
                if target:
                    out.add(target)
    out.discard(name)
    return out


def graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    mods = modules(root, packages)
    return {m: imports(m, p, mods) for m, p in mods.items()}


def private_imports(root: Path, mods: dict[str, Path]) -> dict[str, list[str]]:
    """Names starting with ``_`` that a module takes from another project module: imported
    (``from m import _x``) or read through the module (``m._x``, ``alias._x``)."""
    def private(n: str) -> bool:
        return n.startswith("_") and not n.startswith("__")

    out: dict[str, list[str]] = {}
    for path in mods.values():
        tree = ast.parse(path.read_text(), str(path))
        aliases, bad = set(), []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _resolve(node.module or "", mods):
                bad += [a.name for a in node.names if private(a.name)]
                aliases |= {a.asname or a.name for a in node.names
                            if f"{node.module}.{a.name}" in mods}
            elif isinstance(node, ast.Import):
                aliases |= {a.asname or a.name for a in node.names if a.name in mods}
        bad += [f"{n.value.id}.{n.attr}" for n in ast.walk(tree)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                and n.value.id in aliases and private(n.attr)]
        if bad:
            out[path.relative_to(root).as_posix()] = bad
    return out


def experiments(root: Path = ROOT) -> dict:
    """The experiments' own checks (see the module text)."""
    if not (root / EXPERIMENTS).exists():
        return {"modules": 0, "cycles": [], "product_imports": {}, "private": {},
                "long_files": {}, "long_functions": {}}
    mods = modules(root, (EXPERIMENTS,))
    g_all = graph(root, PACKAGES + (EXPERIMENTS,))
    product = {m: ts for m, ts in g_all.items() if m not in mods}
    rel = {m: p.relative_to(root).as_posix() for m, p in mods.items()}
    return {
        "modules": len(mods),
        "lines": sum(len(p.read_text().splitlines()) for p in mods.values()),
        "cycles": cycles({m: {t for t in g_all[m] if t in mods} for m in mods}),
        "product_imports": {m: sorted(t for t in ts if t.split(".")[0] == EXPERIMENTS)
                            for m, ts in product.items()
                            if any(t.split(".")[0] == EXPERIMENTS for t in ts)},
        "private": private_imports(root, mods),
        "long_files": {rel[m]: n for m, p in mods.items()
                       if (n := len(p.read_text().splitlines())) > EXPERIMENT_LIMITS[
                           "file_lines"]},
        "long_functions": {f"{rel[m]}:{name}": n for m, p in mods.items()
                           for name, n in long_functions(p, EXPERIMENT_LIMITS[
                               "function_lines"])},
    }


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def floors(g: dict[str, set[str]]) -> dict[str, int]:
    """Floor of each module (modules in a circle share the circle's floor)."""
    memo: dict[str, int] = {}

    def floor(v: str, path: tuple[str, ...]) -> int:
        if v in memo:
            return memo[v]
        below = [floor(w, path + (v,)) for w in g[v] if w not in path]
        memo[v] = 1 + max(below, default=0)
        return memo[v]

    for v in g:
        floor(v, ())
    return memo


def part(module: str) -> str:
    """The part a module belongs to: its sub-package, or itself when at the top."""
    parts = module.split(".")
    if parts[0] == "search_spaces":
        return "search_spaces"
    return ".".join(parts[:2])


def parts_graph(g: dict[str, set[str]], mods: dict[str, Path]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, targets in g.items():
        if m.endswith("__main__"):
            continue
        out.setdefault(part(m), set()).update(part(t) for t in targets)
    for p, targets in out.items():
        targets.discard(p)
    return out


def long_functions(path: Path, limit: int) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    lines = path.read_text().splitlines()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = node.end_lineno - node.lineno + 1
            if n > limit and "layout: table" not in lines[node.lineno - 1]:
                out.append((node.name, n))
    return out


OPTUNA_PRIVATE = re.compile(r"optuna\.(?:[a-z_]+\.)*_[a-z]|\._storage\b|\._trial_id\b"
                            r"|\._get_trials\b|_is_pareto_front")
OPTUNA_HOME = "kdnas/optuna_internals.py"


def private_optuna(root: Path, mods: dict[str, Path]) -> dict[str, list[int]]:
    """Files other than OPTUNA_HOME that use a private Optuna name, with the lines."""
    out = {}
    for p in mods.values():
        rel = p.relative_to(root).as_posix()
        if rel != OPTUNA_HOME:
            hits = [i for i, line in enumerate(p.read_text().splitlines(), 1)
                    if OPTUNA_PRIVATE.search(line)]
            if hits:
                out[rel] = hits
    return out


def report(root: Path = ROOT) -> dict:
    mods = modules(root)
    g = graph(root)
    pg = parts_graph(g, mods)
    fl = floors(pg)
    rel = {m: str(p.relative_to(root)) for m, p in mods.items()}
    return {
        "modules": len(mods),
        "lines": sum(len(p.read_text().splitlines()) for p in mods.values()),
        "cycles": cycles(g) + cycles(pg),
        "floors": max(fl.values(), default=0),
        "floor_of": dict(sorted(fl.items(), key=lambda kv: (kv[1], kv[0]))),
        "long_files": {rel[m]: n for m, p in mods.items()
                       if (n := len(p.read_text().splitlines())) > LIMITS["file_lines"]},
        "long_functions": {f"{rel[m]}:{name}": n for m, p in mods.items()
                           for name, n in long_functions(p, LIMITS["function_lines"])},
        "private_optuna": private_optuna(root, mods),
        "experiments": experiments(root),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--floors", action="store_true", help="list every module's floor")
    args = ap.parse_args(argv)
    r = report(args.root)
    print(f"{r['modules']} modules, {r['lines']} lines, {r['floors']} floors of parts "
          f"(limit {LIMITS['floors']})")
    if args.floors:
        for m, f in r["floor_of"].items():
            print(f"  floor {f}: {m}")
    ok = True
    for c in r["cycles"]:
        print("import circle: " + " <-> ".join(c))
        ok = False
    if r["floors"] > LIMITS["floors"]:
        ok = False
    for f, n in r["long_files"].items():
        print(f"file over {LIMITS['file_lines']} lines: {f} ({n})")
        ok = False
    for f, n in r["long_functions"].items():
        print(f"function over {LIMITS['function_lines']} lines: {f} ({n})")
        ok = False
    for f, lines in r["private_optuna"].items():
        print(f"private Optuna name outside {OPTUNA_HOME}: {f} lines {lines}")
        ok = False
    x = r["experiments"]
    print(f"experiments: {x['modules']} modules, {x.get('lines', 0)} lines (files up to "
          f"{EXPERIMENT_LIMITS['file_lines']} lines, functions up to "
          f"{EXPERIMENT_LIMITS['function_lines']})")
    for c in x["cycles"]:
        print("import circle among the experiments: " + " <-> ".join(c))
        ok = False
    for m, ts in x["product_imports"].items():
        print(f"the product imports an experiment: {m} -> {', '.join(ts)}")
        ok = False
    for f, names in x["private"].items():
        print(f"private names imported from another module: {f}: {', '.join(names)}")
        ok = False
    for f, n in x["long_files"].items():
        print(f"experiment file over {EXPERIMENT_LIMITS['file_lines']} lines: {f} ({n})")
        ok = False
    for f, n in x["long_functions"].items():
        print(f"experiment function over {EXPERIMENT_LIMITS['function_lines']} lines: {f} "
              f"({n})")
        ok = False
    print("layout limits hold" if ok else "layout limits broken")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
