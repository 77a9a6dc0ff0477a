"""The layout limits of the package, checked by tools/check_layout.py over its imports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _checker():
    spec = importlib.util.spec_from_file_location("check_layout", ROOT / "tools" /
                                                  "check_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layout_limits_hold():
    r = _checker().report(ROOT)
    assert r["cycles"] == []
    assert r["floors"] <= 5, r["floor_of"]
    assert r["long_files"] == {}
    assert r["long_functions"] == {}
    assert r["private_optuna"] == {}


def test_the_bottom_floor_imports_no_torch_and_the_cli_is_on_top():
    check = _checker()
    r = check.report(ROOT)
    assert r["floor_of"]["kdnas.core"] == 1
    assert r["floor_of"]["kdnas.cli"] == r["floors"]
    for f in (ROOT / "kdnas" / "core").glob("*.py"):
        text = f.read_text()
        assert "import torch" not in text and "from torch" not in text, f


def test_the_checker_finds_a_circle_and_counts_floors(tmp_path):
    check = _checker()
    pkg = tmp_path / "kdnas"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from kdnas.b import g\n")
    (pkg / "b.py").write_text("from kdnas.a.x import f\n\ndef g():\n    pass\n")
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "__init__.py").write_text("")
    r = check.report(tmp_path)
    assert ["kdnas.a.x", "kdnas.b"] in r["cycles"]
    long = "def long():\n" + "    x = 1\n" * 90
    (pkg / "b.py").write_text(long)
    assert check.report(tmp_path)["long_functions"] == {"kdnas/b.py:long": 91}
    (pkg / "b.py").write_text("import optuna\n\n\ndef g(study):\n    return study._storage\n"
                              "from optuna._hypervolume import compute_hypervolume\n")
    assert check.report(tmp_path)["private_optuna"] == {"kdnas/b.py": [5, 6]}


def test_the_experiments_hold_their_own_limits():
    x = _checker().report(ROOT)["experiments"]
    assert x["modules"] >= 10
    assert x["cycles"] == [] and x["product_imports"] == {} and x["private"] == {}
    assert x["long_files"] == {} and x["long_functions"] == {}


def test_the_checker_finds_what_the_experiments_must_not_do(tmp_path):
    """A circle between two experiments, a product module importing one, and a private name
    read through another experiment's module."""
    check = _checker()
    for pkg in ("kdnas", "search_spaces", "benchmarks"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    bench = tmp_path / "benchmarks"
    (bench / "a.py").write_text("from benchmarks import b as bb\n\n\ndef f():\n"
                                "    return bb._hidden()\n")
    (bench / "b.py").write_text("def _hidden():\n    from benchmarks.a import f\n")
    (tmp_path / "kdnas" / "x.py").write_text("from benchmarks.a import f\n")
    x = check.report(tmp_path)["experiments"]
    assert ["benchmarks.a", "benchmarks.b"] in x["cycles"]
    assert x["product_imports"] == {"kdnas.x": ["benchmarks.a"]}
    assert x["private"] == {"benchmarks/a.py": ["bb._hidden"]}
    (bench / "b.py").write_text("def g():\n" + "    x = 1\n" * 130)
    assert check.report(tmp_path)["experiments"]["long_functions"] == {"benchmarks/b.py:g": 131}


def test_the_readme_layout_table_names_every_module():
    """Every module of the product and of the experiments is named in README's layout
    table (a top-level module by its path, one in a folder by its file name in that folder's
    row), so the table cannot fall behind the tree."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout"):text.index("Design notes and conventions:")]
    rows = {line.split("|")[2].strip().strip("`"): line for line in table.splitlines()
            if line.startswith("|") and line.count("|") >= 4}
    missing = []
    for pkg in ("kdnas", "search_spaces", "benchmarks"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            if f.name in ("__init__.py", "__main__.py"):
                continue
            rel = f.relative_to(ROOT).as_posix()
            folder = f.parent.relative_to(ROOT).as_posix() + "/"
            row = rows.get(rel) or rows.get(folder)
            if row is None or (rel not in rows and f"`{f.name}`" not in row):
                missing.append(rel)
    assert missing == []


def test_user_attribute_names_are_spelled_once():
    """The study's and trials' user attributes are named in kdnas/core/attrs.py only: no part
    of the product reads or writes one by a string of its own."""
    import re

    spelled = re.compile(r"""(set_user_attr|user_attrs\.get|user_attrs\[)\(?["']""")
    offenders = [f"{f.relative_to(ROOT)}:{i}" for f in sorted((ROOT / "kdnas").rglob("*.py"))
                 for i, line in enumerate(f.read_text().splitlines(), 1)
                 if spelled.search(line)]
    assert offenders == []
