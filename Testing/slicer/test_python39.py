"""Slicer 5.8 runs Python 3.9: the module and the worker must compile and run there.

Three checks, over every ``.py`` file under ``PowdrOutpaint/`` (the module
``PowdrOutpaint.py``, its library ``PowdrOutpaintLib/`` and the engine ``powdr_outpaint/``):

(a) each file byte-compiles with a real Python 3.9 (this catches ``match``, ``except*``
    and other new syntax);
(b) an AST scan, run here, for constructs that *compile* on 3.9 but fail when they run
    (:data:`RUNTIME_RULES` and the PEP 604 rule below);
(c) what can run under Python 3.9 without PyTorch does run there: ``python -m powdr_outpaint
    --help``, the engine's torch-free modules, and the module's ``process``, ``engine``,
    ``dependencies`` and ``modelcard`` (whose package ``__init__`` needs Slicer, so they are
    loaded under a bare package), including a real worker process started by
    ``WorkerProcess`` under 3.9.

Python 3.9 is found through ``$POWDR_PYTHON39``, pyenv (any installed 3.9.x), or
``python3.9`` on PATH; without it (a) and (c) skip with a message.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_DIR = REPOSITORY / "PowdrOutpaint"
SOURCES = sorted(p for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def relative(path: Path) -> str:
    return path.relative_to(REPOSITORY).as_posix()


# ------------------------------------------------------------------------------------------
# Finding Python 3.9


def _version_of(command: list[str], env: dict[str, str] | None = None) -> tuple[tuple[int, int], str] | None:
    try:
        result = subprocess.run(
            [*command, "-c", "import sys; print(sys.version_info[0], sys.version_info[1], sys.executable)"],
            capture_output=True, text=True, timeout=60, env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    major, minor, executable = result.stdout.strip().split(" ", 2)
    return (int(major), int(minor)), executable


@lru_cache(maxsize=None)
def python39() -> str | None:
    """The path of a Python 3.9 interpreter (a real executable, not a pyenv shim), or None."""
    candidates: list[tuple[list[str], dict[str, str] | None]] = []
    if os.environ.get("POWDR_PYTHON39"):
        candidates.append(([os.environ["POWDR_PYTHON39"]], None))
    pyenv = shutil.which("pyenv")
    if pyenv:
        versions = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True, timeout=60)
        for version in sorted(versions.stdout.split(), reverse=True):
            if version.startswith("3.9."):
                env = dict(os.environ, PYENV_VERSION=version)
                which = subprocess.run([pyenv, "which", "python3.9"], capture_output=True, text=True,
                                       timeout=60, env=env)
                if which.returncode == 0 and which.stdout.strip():
                    candidates.append(([which.stdout.strip()], None))
                candidates.append((["python3.9"], env))
    found = shutil.which("python3.9")
    if found:
        candidates.append(([found], None))
    for command, env in candidates:
        answer = _version_of(command, env)
        if answer and answer[0] == (3, 9):
            return answer[1]
    return None


def require_python39() -> str:
    executable = python39()
    if executable is None:
        pytest.skip("Python 3.9 (Slicer 5.8's Python) was not found: set POWDR_PYTHON39, install 3.9 with "
                    "pyenv, or put python3.9 on PATH")
    return executable


def run39(code: str, *args: str, timeout: float = 120, **options) -> subprocess.CompletedProcess:
    """``python3.9 -c CODE ARGS`` with the engine and the module folder importable; no user site."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PYTHONPATH=str(MODULE_DIR), PYTHONNOUSERSITE="1", PYTHONIOENCODING="utf-8",
               PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([require_python39(), "-c", textwrap.dedent(code), *args], capture_output=True,
                          text=True, encoding="utf-8", timeout=timeout, env=env, cwd=str(MODULE_DIR), **options)


# ------------------------------------------------------------------------------------------
# (a) compiling with Python 3.9


def test_every_file_byte_compiles_with_python39(tmp_path):
    code = """
        import py_compile, sys
        failures = []
        for index, path in enumerate(sys.argv[2:]):
            try:
                py_compile.compile(path, cfile=f"{sys.argv[1]}/{index}.pyc", doraise=True)
            except py_compile.PyCompileError as error:
                failures.append(str(error))
        print("\\n".join(failures))
        sys.exit(1 if failures else 0)
    """
    result = run39(code, str(tmp_path), *map(str, SOURCES))
    assert result.returncode == 0, f"not valid Python 3.9:\n{result.stdout}{result.stderr}"
    assert len(list(tmp_path.glob("*.pyc"))) == len(SOURCES) > 40


# ------------------------------------------------------------------------------------------
# (b) what compiles on 3.9 but fails when it runs there

#: Names that are 3.10 or newer: (module, attribute) -> the version that added it. Both
#: ``module.attribute`` and ``from module import attribute`` are caught (imports inside
#: ``if TYPE_CHECKING:`` are fine).
NEW_MODULE_ATTRIBUTES: dict[tuple[str, str], str] = {
    ("itertools", "pairwise"): "3.10",
    ("itertools", "batched"): "3.12",
    ("typing", "TypeAlias"): "3.10",
    ("typing", "ParamSpec"): "3.10",
    ("typing", "ParamSpecArgs"): "3.10",
    ("typing", "ParamSpecKwargs"): "3.10",
    ("typing", "Concatenate"): "3.10",
    ("typing", "TypeGuard"): "3.10",
    ("typing", "is_typeddict"): "3.10",
    ("typing", "Self"): "3.11",
    ("typing", "Never"): "3.11",
    ("typing", "LiteralString"): "3.11",
    ("typing", "Required"): "3.11",
    ("typing", "NotRequired"): "3.11",
    ("typing", "assert_never"): "3.11",
    ("typing", "reveal_type"): "3.11",
    ("typing", "override"): "3.12",
    ("contextlib", "aclosing"): "3.10",
    ("contextlib", "chdir"): "3.11",
    ("inspect", "get_annotations"): "3.10",
    ("importlib.metadata", "packages_distributions"): "3.10",
    ("sys", "orig_argv"): "3.10",
    ("sys", "stdlib_module_names"): "3.10",
    ("sys", "exception"): "3.11",
    ("dataclasses", "KW_ONLY"): "3.10",
    ("enum", "StrEnum"): "3.11",
    ("datetime", "UTC"): "3.11",
    ("hashlib", "file_digest"): "3.11",
    ("statistics", "correlation"): "3.10",
    ("statistics", "covariance"): "3.10",
    ("statistics", "linear_regression"): "3.10",
}
#: Modules that do not exist in 3.9.
NEW_MODULES: dict[str, str] = {"tomllib": "3.11", "wsgiref.types": "3.11"}
#: Built-in functions added later.
NEW_BUILTINS: dict[str, str] = {"aiter": "3.10", "anext": "3.10"}
#: Methods with these names are new (``int.bit_count``, ``Path.hardlink_to``); no other
#: class in the stdlib, numpy or torch uses the names.
NEW_METHODS: dict[str, str] = {"bit_count": "3.10 (int.bit_count)", "hardlink_to": "3.10 (Path.hardlink_to)"}
#: Keyword arguments added later: callee (dotted, after resolving imports) -> {keyword: version}.
NEW_KEYWORDS: dict[str, dict[str, str]] = {
    "zip": {"strict": "3.10"},
    "dataclasses.dataclass": {"slots": "3.10", "kw_only": "3.10", "match_args": "3.10", "weakref_slot": "3.11"},
    "dataclasses.field": {"kw_only": "3.10"},
    "bisect.bisect": {"key": "3.10"},
    "bisect.bisect_left": {"key": "3.10"},
    "bisect.bisect_right": {"key": "3.10"},
    "bisect.insort": {"key": "3.10"},
    "bisect.insort_left": {"key": "3.10"},
    "bisect.insort_right": {"key": "3.10"},
    "glob.glob": {"root_dir": "3.10", "dir_fd": "3.10"},
    "glob.iglob": {"root_dir": "3.10", "dir_fd": "3.10"},
    "tempfile.TemporaryDirectory": {"ignore_cleanup_errors": "3.10"},
    "subprocess.Popen": {"pipesize": "3.10", "process_group": "3.11"},
    "subprocess.run": {"pipesize": "3.10", "process_group": "3.11"},
    "shutil.make_archive": {"root_dir_fd": "3.11"},
    "importlib.metadata.entry_points": {"group": "3.10", "name": "3.10"},
}
RUNTIME_RULES = (NEW_MODULE_ATTRIBUTES, NEW_MODULES, NEW_BUILTINS, NEW_METHODS, NEW_KEYWORDS)

#: Decorators whose classes' annotations Slicer evaluates at run time (``typing.get_type_hints``),
#: so ``X | Y`` there fails on 3.9 even under ``from __future__ import annotations``.
TYPE_HINT_EVALUATING_DECORATORS = {"parameterNodeWrapper", "parameterPack"}
#: Names that are types when they appear as an operand of ``|`` outside annotations.
BUILTIN_TYPES = {"int", "float", "complex", "str", "bytes", "bytearray", "bool", "list", "dict", "tuple",
                 "set", "frozenset", "type", "object", "memoryview", "range", "slice"}


class Checker(ast.NodeVisitor):
    """Finds, in one file, what Python 3.9 compiles but cannot run."""

    def __init__(self, path: Path, tree: ast.Module):
        self.path = path
        self.problems: list[str] = []
        self.future_annotations = any(
            isinstance(node, ast.ImportFrom) and node.module == "__future__"
            and any(alias.name == "annotations" for alias in node.names)
            for node in tree.body
        )
        # local name -> dotted origin ("np" -> "numpy", "field" -> "dataclasses.field")
        self.aliases: dict[str, str] = {}
        self.type_names = set(BUILTIN_TYPES)  # classes defined here and names imported from typing & co
        self.in_annotation = 0
        self.in_evaluated_class = 0
        self.in_type_checking = 0
        self.reported: set[int] = set()  # id() of the | nodes already reported (once each)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                self.type_names.add(node.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self.aliases[alias.asname or alias.name.partition(".")[0]] = (
                        alias.name if alias.asname else alias.name.partition(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                    if node.module in ("typing", "collections.abc", "pathlib", "os") or alias.name[:1].isupper():
                        self.type_names.add(alias.asname or alias.name)

    def report(self, node: ast.AST, message: str) -> None:
        self.problems.append(f"{relative(self.path)}:{getattr(node, 'lineno', '?')}: {message}")

    def dotted(self, node: ast.AST) -> str | None:
        """``a.b.c`` with its first name resolved through the imports, or None."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(self.aliases.get(node.id, node.id))
        return ".".join(reversed(parts))

    # -- annotations -----------------------------------------------------------------------
    def annotation(self, node: ast.AST | None) -> None:
        if node is None:
            return
        self.in_annotation += 1
        self.visit(node)
        self.in_annotation -= 1
        if self.in_evaluated_class and isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "|" in node.value:  # a string annotation is evaluated by get_type_hints too
                self.report(node, f"'{node.value}': X | Y in a class whose annotations are evaluated at run time")

    def visit_arguments(self, node: ast.arguments) -> None:
        for argument in node.posonlyargs + node.args + node.kwonlyargs + [node.vararg, node.kwarg]:
            if argument is not None:
                self.annotation(argument.annotation)
        for default in node.defaults + [d for d in node.kw_defaults if d is not None]:
            self.visit(default)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        self.visit(node.args)
        self.annotation(node.returns)
        for statement in node.body:
            self.visit(statement)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit(node.target)
        self.annotation(node.annotation)
        if node.value is not None:
            self.visit(node.value)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        names = {self.dotted(d.func if isinstance(d, ast.Call) else d) or "" for d in node.decorator_list}
        evaluated = any(name.rpartition(".")[2] in TYPE_HINT_EVALUATING_DECORATORS for name in names)
        self.in_evaluated_class += evaluated
        self.generic_visit(node)
        self.in_evaluated_class -= evaluated

    def visit_If(self, node: ast.If) -> None:
        type_checking = (self.dotted(node.test) or "").endswith("TYPE_CHECKING")
        self.visit(node.test)
        self.in_type_checking += type_checking
        for statement in node.body:
            self.visit(statement)
        self.in_type_checking -= type_checking
        for statement in node.orelse:
            self.visit(statement)

    # -- PEP 604 -----------------------------------------------------------------------------
    def type_like(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and node.value is None:
            return True
        if isinstance(node, ast.Name):
            return node.id in self.type_names
        if isinstance(node, ast.Subscript):  # list[int], Optional[X], np.ndarray[...]
            return self.type_like(node.value)
        if isinstance(node, ast.Attribute):  # os.PathLike, torch.Tensor, np.ndarray
            return node.attr[:1].isupper() and not node.attr.isupper() or node.attr == "ndarray"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self.type_like(node.left) or self.type_like(node.right)
        return False

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.BitOr) and id(node) not in self.reported:
            if self.in_annotation:
                if not self.future_annotations:
                    self.report(node, "X | Y in an annotation without 'from __future__ import annotations' (3.10)")
                elif self.in_evaluated_class:
                    self.report(node, "X | Y in a class whose annotations are evaluated at run time "
                                      "(typing.get_type_hints; use Optional/Union)")
            elif self.type_like(node.left) or self.type_like(node.right):
                self.report(node, "X | Y of types evaluated at run time (3.10; use Optional/Union)")
        self.generic_visit(node)

    # -- names, calls and keywords -------------------------------------------------------------
    def check_name(self, node: ast.AST, dotted: str) -> None:
        module, _, name = dotted.rpartition(".")
        if (module, name) in NEW_MODULE_ATTRIBUTES and not self.in_type_checking:
            self.report(node, f"{dotted} is new in Python {NEW_MODULE_ATTRIBUTES[module, name]}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = self.dotted(node)
        if dotted:
            self.check_name(node, dotted)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and not node.level:
            if node.module in NEW_MODULES and not self.in_type_checking:
                self.report(node, f"module {node.module} is new in Python {NEW_MODULES[node.module]}")
            for alias in node.names:
                self.check_name(node, f"{node.module}.{alias.name}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name in NEW_MODULES and not self.in_type_checking:
                self.report(node, f"module {alias.name} is new in Python {NEW_MODULES[alias.name]}")

    def visit_Call(self, node: ast.Call) -> None:
        callee = self.dotted(node.func)
        if isinstance(node.func, ast.Name) and node.func.id in NEW_BUILTINS and node.func.id not in self.aliases:
            self.report(node, f"{node.func.id}() is new in Python {NEW_BUILTINS[node.func.id]}")
        if isinstance(node.func, ast.Attribute) and node.func.attr in NEW_METHODS:
            self.report(node, f".{node.func.attr}() is new in Python {NEW_METHODS[node.func.attr]}")
        if callee in ("isinstance", "issubclass") and len(node.args) == 2:
            unions = [n for n in ast.walk(node.args[1]) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)]
            if unions:
                self.report(node, f"{callee}(x, X | Y) needs Python 3.10; use a tuple")
                self.reported.update(id(n) for n in unions)
        for keyword in node.keywords:
            version = NEW_KEYWORDS.get(callee or "", {}).get(keyword.arg or "")
            if version:
                self.report(node, f"{callee}({keyword.arg}=...) is new in Python {version}")
        self.generic_visit(node)

    def visit_Match(self, node: ast.AST) -> None:  # Python 3.10 syntax (3.9's compile rejects it too)
        self.report(node, "a match statement needs Python 3.10")
        self.generic_visit(node)


def check_source(path: Path, source: str) -> list[str]:
    tree = ast.parse(source, filename=str(path))
    checker = Checker(path, tree)
    checker.visit(tree)
    return checker.problems


def test_nothing_that_compiles_on_39_but_fails_when_it_runs():
    problems = []
    for path in SOURCES:
        problems += check_source(path, path.read_text(encoding="utf-8"))
    assert not problems, "constructs Python 3.9 (Slicer 5.8) cannot run:\n" + "\n".join(problems)


@pytest.mark.parametrize("source, expected", [
    ("def f(x: int | None): pass", "without 'from __future__"),
    ("from __future__ import annotations\ndef f(x: int | None) -> str | None: pass", None),
    ("from __future__ import annotations\nAlias = int | None", "evaluated at run time"),
    ("from __future__ import annotations\nimport os\nPathType = str | os.PathLike", "evaluated at run time"),
    ("from __future__ import annotations\nisinstance(1, int | float)", "use a tuple"),
    ("from __future__ import annotations\nflags = 1 | 2\nmask = a | b", None),
    ("from __future__ import annotations\nfrom slicer.parameterNodeWrapper import parameterNodeWrapper\n"
     "@parameterNodeWrapper\nclass P:\n    x: int | None = None", "evaluated at run time"),
    ("@parameterNodeWrapper\nclass P:\n    x: 'int | None' = None", "evaluated at run time"),
    ("from __future__ import annotations\nfrom dataclasses import dataclass\n"
     "@dataclass\nclass D:\n    x: int | None = None", None),
    ("from dataclasses import dataclass\n@dataclass(slots=True)\nclass D:\n    x: int = 0", "slots=...) is new"),
    ("import dataclasses\n@dataclasses.dataclass(kw_only=True)\nclass D:\n    x: int = 0", "kw_only=...) is new"),
    ("list(zip(a, b, strict=True))", "zip(strict=...)"),
    ("import itertools\nitertools.pairwise(x)", "itertools.pairwise is new"),
    ("from itertools import pairwise", "itertools.pairwise is new"),
    ("n = (5).bit_count()", "bit_count"),
    ("from typing import TypeAlias", "typing.TypeAlias is new"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from typing import TypeAlias", None),
    ("import typing\nP = typing.ParamSpec('P')", "typing.ParamSpec is new"),
    ("x = anext(it)", "anext() is new"),
    ("import contextlib\ncontextlib.aclosing(x)", "contextlib.aclosing is new"),
    ("import inspect\ninspect.get_annotations(f)", "inspect.get_annotations is new"),
    ("import importlib.metadata\nimportlib.metadata.packages_distributions()", "packages_distributions is new"),
    ("import bisect\nbisect.bisect_left(a, x, key=len)", "bisect.bisect_left(key=...)"),
    ("import sys\nprint(sys.orig_argv)", "sys.orig_argv is new"),
    ("'abc'.removeprefix('a')", None),
    ("match x:\n    case 1:\n        pass", "match statement"),
    ("import tomllib", "module tomllib is new"),
])
def test_the_scan_itself(source, expected):
    problems = check_source(Path(REPOSITORY / "example.py"), source)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems


# ------------------------------------------------------------------------------------------
# (c) running under Python 3.9 what needs no PyTorch

#: Loads PowdrOutpaintLib's Slicer-free modules under a bare package (its __init__ imports Slicer).
LIBRARY_BOOTSTRAP = """
    import importlib, importlib.machinery, importlib.util, os, sys
    package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec("PowdrOutpaintLib", None, is_package=True))
    package.__path__ = [os.path.join(os.getcwd(), "PowdrOutpaintLib")]
    sys.modules["PowdrOutpaintLib"] = package
"""


def test_engine_help_runs_under_python39_without_torch():
    result = run39("""
        import runpy, sys
        sys.argv = ["powdr-outpaint", "--help"]
        try:
            runpy.run_module("powdr_outpaint", run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        assert "torch" not in sys.modules and "numpy" not in sys.modules, "--help imported torch or numpy"
        print("PYTHON", sys.version_info[:2])
    """)
    assert result.returncode == 0, result.stderr
    assert "PYTHON (3, 9)" in result.stdout
    for command in ("sample", "init-checkpoint", "info", "bench", "train"):
        assert command in result.stdout
    # and the real command line, as the worker is started
    plain = subprocess.run([require_python39(), "-m", "powdr_outpaint", "--version"], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(MODULE_DIR), PYTHONNOUSERSITE="1"),
                           cwd=str(MODULE_DIR), timeout=60)
    assert plain.returncode == 0 and plain.stdout.startswith("powdr-outpaint "), plain.stderr


def test_torch_free_engine_modules_run_under_python39(tmp_path):
    result = run39("""
        import json, sys
        from pathlib import Path
        from powdr_outpaint import errors, progress
        from powdr_outpaint.commands import cli
        from powdr_outpaint.imaging import atomic
        assert cli.command_in(["--version"]) is None and cli.command_in(["info", "--json"]) == "info"
        parser = cli.build_parser(None)
        assert set(parser._subparsers._group_actions[0].choices) == set(cli.COMMANDS)
        folder = Path(sys.argv[1]) / "dossier été"
        atomic.write_json_atomic(folder / "ö.json", {"a": 1})
        assert json.loads((folder / "ö.json").read_text(encoding="utf-8")) == {"a": 1}
        progress.Progress("json").done({"samples": [str(folder / "ö.json")]})
        assert "torch" not in sys.modules
    """, str(tmp_path))
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout.strip().splitlines()[-1])
    assert done["event"] == "done" and Path(done["outputs"]["samples"][0]).is_file()


def test_module_library_runs_under_python39(tmp_path):
    """process, engine, dependencies and modelcard under 3.9: a model card read without torch and a
    real worker (the engine's ``info --json`` in this test's Python, which has torch) followed by
    the module's own ``WorkerProcess``."""
    from powdr_outpaint.model.checkpoint import initial_checkpoint

    checkpoint = initial_checkpoint(tmp_path / "modèle" / "tiny.pt", "tiny", seed=0)
    result = run39(textwrap.dedent(LIBRARY_BOOTSTRAP) + textwrap.dedent("""
        import json, sys
        from PowdrOutpaintLib import dependencies, modelcard
        from PowdrOutpaintLib.engine import EngineRunner
        from PowdrOutpaintLib.process import WorkerProcess, describeCommand
        missing = [r.distribution for r in dependencies.missingRequirements()]
        assert "torch" in missing, missing  # 3.9 here has no torch: reported, not crashed
        card = modelcard.readModelCard(sys.argv[1])
        runner = EngineRunner(sys.argv[2])  # the engine runs in a Python with torch
        command = runner.command("info", "--checkpoint", sys.argv[1], "--json")
        describeCommand(command)
        worker = WorkerProcess(command, env=runner.environment(), cwd=os.getcwd()).start()
        messages = worker.wait(timeout=120)
        assert worker.returnCode == 0, worker.logText
        print(json.dumps({"card": card, "log": worker.logLines, "version": list(sys.version_info[:2]),
                          "torch": "torch" in sys.modules}))
    """), str(checkpoint), sys.executable, timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["version"] == [3, 9] and report["torch"] is False
    engine_card = json.loads(report["log"][-1])  # info --json prints one non-event JSON line: a log line
    assert report["card"] == engine_card
