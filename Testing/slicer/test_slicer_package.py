"""Static checks of the Slicer module: .ui file, bindings, Qt-free library, CMake lists, requirements."""

from __future__ import annotations

import ast
import os
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_DIR = REPOSITORY / "PowdrOutpaint"
MODULE_FILE = MODULE_DIR / "PowdrOutpaint.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "PowdrOutpaint.ui"
LIB_DIR = MODULE_DIR / "PowdrOutpaintLib"


def uiWidgets() -> dict[str, str]:
    """Object name -> class of every widget in the .ui file."""
    root = ElementTree.parse(UI_FILE).getroot()
    return {widget.get("name"): widget.get("class") for widget in root.iter("widget")}


def parameterNames() -> dict[str, str]:
    """SlicerParameterName of every bound widget in the .ui file."""
    root = ElementTree.parse(UI_FILE).getroot()
    names = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                names[widget.get("name")] = prop.find("string").text
    return names


def parameterNodeFields() -> dict[str, str]:
    """Annotated fields of the @parameterNodeWrapper class in the module file."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                isinstance(decorator, ast.Name) and decorator.id == "parameterNodeWrapper"
                for decorator in node.decorator_list):
            return {statement.target.id: ast.unparse(statement.annotation) for statement in node.body
                    if isinstance(statement, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in PowdrOutpaint.py")


def test_ui_file_is_valid_designer_xml():
    root = ElementTree.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.find("class").text == "PowdrOutpaint"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "PowdrOutpaint"
    names = [widget.get("name") for widget in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate object names"
    # Every non-Qt class is declared as a custom widget
    declared = {custom.find("class").text for custom in root.iter("customwidget")}
    used = {widget.get("class") for widget in root.iter("widget")}
    assert {name for name in used if not name.startswith("Q")} <= declared
    # Scene connections point at existing MRML widgets
    widgets = uiWidgets()
    for connection in root.iter("connection"):
        assert connection.find("sender").text in widgets
        receiver = connection.find("receiver").text
        assert receiver in widgets and widgets[receiver].startswith("qMRML")
        assert connection.find("slot").text == "setMRMLScene(vtkMRMLScene*)"
    mrmlWidgets = {name for name, cls in widgets.items() if cls.startswith("qMRML") and name != "PowdrOutpaint"}
    assert mrmlWidgets == {connection.find("receiver").text for connection in root.iter("connection")}


def test_every_widget_the_code_uses_exists():
    source = MODULE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", source))
    assert used, "the module does not use self.ui"
    missing = used - set(uiWidgets())
    assert not missing, f"widgets used in PowdrOutpaint.py but absent from the .ui file: {sorted(missing)}"


def test_bound_widgets_match_the_parameter_node():
    fields = parameterNodeFields()
    bound = parameterNames()
    widgets = uiWidgets()
    unknown = {name for name in bound.values() if name not in fields}
    assert not unknown, f"SlicerParameterName without a parameter: {sorted(unknown)}"
    expectedWidget = {"int": {"QSpinBox", "QSlider"}, "float": {"ctkSliderWidget", "QDoubleSpinBox"},
                      "str": {"QComboBox", "QLineEdit"}}
    for widgetName, parameter in bound.items():
        annotation = fields[parameter]
        widgetClass = widgets[widgetName]
        if "vtkMRML" in annotation:
            assert widgetClass == "qMRMLNodeComboBox", widgetName
            continue
        baseType = re.sub(r"Annotated\[(\w+),.*", r"\1", annotation)
        assert widgetClass in expectedWidget[baseType], (widgetName, annotation)
        if widgetClass == "QComboBox":
            assert "Choice(" in annotation, f"{parameter}: a combo box needs a Choice annotation"
    # Combo boxes get their items from the Choice annotation; spin box ranges agree with WithinRange
    root = ElementTree.parse(UI_FILE).getroot()
    for widget in root.iter("widget"):
        parameter = bound.get(widget.get("name"))
        if widget.get("class") != "QSpinBox" or parameter is None:
            continue
        match = re.search(r"WithinRange\((\d+), (\d+)\)", fields[parameter])
        properties = {prop.get("name"): prop.find("number").text for prop in widget.findall("property")
                      if prop.find("number") is not None}
        assert match and (properties.get("minimum"), properties.get("maximum")) == match.groups(), parameter


def test_library_does_not_use_qt():
    forbidden = {"qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "PythonQt"}
    for path in LIB_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] not in {"qt", "ctk", "PythonQt"} and module not in forbidden, (
                    f"{path.name} imports {module}")


def test_library_imports_without_qt():
    import subprocess

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import PowdrOutpaintLib; "
            "assert 'qt' not in sys.modules and 'ctk' not in sys.modules; "
            "print(PowdrOutpaintLib.PowdrOutpaintLogic.__name__)")
    completed = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "PowdrOutpaintLogic"


def cmakeListedFiles(cmakeText: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", cmakeText, re.S)
    assert match, f"{variable} is not set in the module's CMakeLists.txt"
    return [line.strip() for line in match.group(1).split() if line.strip() and not line.startswith("#")]


def test_cmake_lists_every_script_and_resource():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = set(cmakeListedFiles(cmake, "MODULE_PYTHON_SCRIPTS"))
    scripts = {script.replace("${MODULE_NAME}", "PowdrOutpaint") for script in scripts}
    expectedScripts = {"PowdrOutpaint.py"}
    expectedScripts |= {f"PowdrOutpaintLib/{path.name}" for path in LIB_DIR.glob("*.py")}
    expectedScripts |= {f"powdr_outpaint/{path.name}" for path in (MODULE_DIR / "powdr_outpaint").glob("*.py")}
    missing = expectedScripts - scripts
    assert not missing, f"add to MODULE_PYTHON_SCRIPTS in PowdrOutpaint/CMakeLists.txt: {sorted(missing)}"
    assert all((MODULE_DIR / script).is_file() for script in scripts), "CMake lists a script that does not exist"

    resources = {resource.replace("${MODULE_NAME}", "PowdrOutpaint")
                 for resource in cmakeListedFiles(cmake, "MODULE_PYTHON_RESOURCES")}
    expectedResources = {str(path.relative_to(MODULE_DIR)).replace("\\", "/")
                         for path in (MODULE_DIR / "Resources").rglob("*") if path.is_file()}
    assert resources == expectedResources
    assert "WITH_GENERIC_TESTS" in cmake


def test_icons_are_128_pixel_png():
    for path in (REPOSITORY / "PowdrOutpaint.png", MODULE_DIR / "Resources" / "Icons" / "PowdrOutpaint.png"):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (128, 128), path


def test_extension_metadata():
    cmake = (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({variable}\s", cmake), variable
    assert re.search(r"set\(EXTENSION_DEPENDS\s+\"?PyTorch", cmake)
    assert "add_subdirectory(PowdrOutpaint)" in cmake


def test_slicer_requirements_match_pyproject():
    """What Slicer installs is a subset of the engine's dependencies, with the same accepted versions."""
    tomllib = pytest.importorskip("tomllib")
    from PowdrOutpaintLib.dependencies import SLICER_REQUIREMENTS, TORCH_INSTALL_SPECIFIER

    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {re.split(r"[<>=!~ ;\[]", spec, maxsplit=1)[0].lower(): spec.replace(" ", "")
                for spec in project["dependencies"]}
    for requirement in SLICER_REQUIREMENTS:
        name = requirement.distribution.lower()
        assert declared.get(name) == f"{name}{requirement.specifier}", name
    torch = next(requirement for requirement in SLICER_REQUIREMENTS if requirement.importName == "torch")
    assert torch.pipSpec == f"torch{TORCH_INSTALL_SPECIFIER}" and "<2.13" in torch.pipSpec
    assert {"pywavelets", "scikit-image", "matplotlib"}.isdisjoint(
        requirement.distribution.lower() for requirement in SLICER_REQUIREMENTS)


def test_missing_requirements_are_detected(monkeypatch):
    from PowdrOutpaintLib import dependencies

    assert dependencies.missingRequirements() == []  # this test environment has the engine's packages
    real = dependencies.importlib.util.find_spec
    monkeypatch.setattr(dependencies.importlib.util, "find_spec",
                        lambda name, *args: None if name in ("torch", "numpy") else real(name, *args))
    missing = [requirement.distribution for requirement in dependencies.missingRequirements()]
    assert missing == ["torch", "numpy"]  # numpy is shipped by Slicer, but absent here, so reported
    hint = dependencies.pipCommandHint(dependencies.missingRequirements())
    assert hint == "slicer.util.pip_install(['torch>=2.1,<2.13', 'numpy>=1.24'])"
    asked = []
    assert dependencies.ensureDependencies(askConfirmation=lambda message: asked.append(message) or False) is False
    assert len(asked) == 1 and "torch" in asked[0]


def test_default_checkpoint_is_the_bundled_demo_model():
    from PowdrOutpaintLib import defaultCheckpointPath

    path = defaultCheckpointPath()
    assert os.path.isfile(path)
    assert os.path.realpath(path) == os.path.realpath(REPOSITORY / "Resources" / "Models" / "powdr_demo_brain_t1.pt")


def test_panel_defaults_are_the_engines():
    """The panel, the batch logic and the command line start from the same sampler and K (the
    choice the README's sampler comparison supports); the .ui's spin box shows that K too."""
    import re

    from powdr_outpaint.outpainting import outpaint
    from PowdrOutpaintLib import logic

    assert (logic.DEFAULT_SAMPLER, logic.DEFAULT_STEPS) == (outpaint.DEFAULT_SAMPLER, outpaint.DEFAULT_STEPS)
    ui = (REPOSITORY / "PowdrOutpaint" / "Resources" / "UI" / "PowdrOutpaint.ui").read_text()
    spin = re.search(r'name="numberOfStepsSpinBox">.*?name="value">\s*<number>(\d+)</number>', ui, re.S)
    assert int(spin.group(1)) == outpaint.DEFAULT_STEPS
    module = (REPOSITORY / "PowdrOutpaint" / "PowdrOutpaint.py").read_text()
    assert "numberOfSteps: Annotated[int, WithinRange(1, 1000)] = DEFAULT_STEPS" in module
    assert "sampler: Annotated[str, Choice(list(SAMPLERS))] = DEFAULT_SAMPLER" in module


def test_panel_offers_exactly_the_engines_samplers():
    """The panel's sampler choices are those the worker accepts (a choice it lacked, or one the
    worker refuses, would only show at run time)."""
    from powdr_outpaint.model.samplers import SAMPLERS as engine
    from PowdrOutpaintLib.logic import SAMPLERS as panel

    assert tuple(panel) == tuple(engine)
