"""Issue 17: lrscan's modules import one another without cycles, none is over 600 lines, and
each has a docstring (saying its one job).

benchmarks/import_graph.py builds the graph from the source with `ast`: every import counts,
inside functions too, and nothing here imports lrscan itself (so no torch).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "import_graph.py"


def load_script():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycle_no_module_over_600_lines_and_each_with_a_docstring():
    result = load_script().report(ROOT / "lrscan")
    assert result["cycles"] == []
    assert result["oversized"] == {}
    assert result["undocumented"] == []
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_graph_counts_function_level_relative_and_submodule_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text('"""A package."""\nfrom pkg import a\n')
    (package / "a.py").write_text("def f():\n    from .sub import b\n")
    (package / "sub" / "__init__.py").write_text('"""A sub-package."""\n')
    (package / "sub" / "b.py").write_text("from pkg import a\nimport pkg.sub.c\n")
    (package / "sub" / "c.py").write_text("import os\n" + "x = 1\n" * 700)
    graph = load_script()
    edges = graph.import_graph(package)
    assert edges == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(), "pkg.sub.b": {"pkg.a", "pkg.sub.c"},
                     "pkg.sub.c": set()}
    result = graph.report(package)
    assert [c["modules"] for c in result["cycles"]] == [["pkg.a", "pkg.sub.b"]]
    assert result["cycles"][0]["path"] == ["pkg.a", "pkg.sub.b", "pkg.a"]
    assert result["oversized"] == {"pkg.sub.c": 701}
    assert result["undocumented"] == ["pkg.a", "pkg.sub.b", "pkg.sub.c"]
    done = subprocess.run([sys.executable, str(SCRIPT), str(package)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "pkg.a -> pkg.sub.b -> pkg.a" in done.stdout
