"""Run the module against Slicer's own Python code of a given release, without a Slicer application.

``../shared/slicer/<release>/python/slicer/`` holds Slicer's real pure-Python files
(``parameterNodeWrapper``, ``ScriptedLoadableModule.py``, ``util.py``, 5.12's
``packaging.py``). :func:`slicerRelease` loads them, with slicer-core's real MRML classes,
in place of what the Slicer application would provide, imports the module file
``PowdrOutpaint.py`` against them, and undoes everything afterwards.

Those files import ``qt`` and ``ctk``, which exist only inside Slicer. This file is the only
place with stand-ins for them, and they are as small as the tested code allows:

* Widgets are plain Python objects with the attributes, methods and signals the module and
  Slicer's GUI connectors use (``value``, ``setRange``, ``currentIndex``, ``addItem``,
  ``currentNode``, ``valueChanged``...). A stand-in class exists for each class name, so
  the connectors' ``type(widget) == qt.QSpinBox`` checks choose connectors as in Slicer.
* ``slicer.util.loadUI`` builds these widgets from the module's real ``.ui`` file: object
  names, classes, ``SlicerParameterName`` and numeric properties (minimum, maximum, value).
* ``qt.QSettings`` is a dictionary; ``qt.QTimer`` only records whether it runs; dialogs
  (``confirmOkCancelDisplay``, ``errorDisplay``, ``QFileDialog``) return what a test sets
  and record what they were asked.

What they leave unverified, and only a real Slicer shows: Qt's own widget behaviour
(painting, layout, focus, real event processing, Designer's handling of the .ui beyond the
properties listed above), PythonQt's signal and slot conversions (e.g. ``QString`` to
``str``), the Qt 5 / Qt 6 differences between 5.10 and 5.12, the Segment Editor and the
sequence browser toolbar, and installing packages for real (pip runs are recorded, not run).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import shutil
import sys
import tempfile
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Callable

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_DIR = REPOSITORY / "PowdrOutpaint"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "PowdrOutpaint.ui"
SHARED_SLICER = REPOSITORY.parent / "shared" / "slicer"
RELEASES = ("v5.8.0", "v5.10.0", "v5.12.3")


def releaseFolder(release: str) -> Path:
    return SHARED_SLICER / release / "python" / "slicer"


def missingReleaseMessage(release: str) -> str | None:
    if not releaseFolder(release).is_dir():
        return (f"Slicer {release} sources not found at {releaseFolder(release)} "
                "(../shared/slicer beside the repository; see its README)")
    return None


# ---------------------------------------------------------------------------------------
# Stand-ins for qt and ctk

class Signal:
    """A signal: ``connect``/``disconnect`` callables, ``emit`` calls them.

    Like PythonQt, a slot that takes fewer arguments than the signal carries gets the first ones.
    """

    def __init__(self):
        self.slots: list[Callable] = []

    def connect(self, slot: Callable) -> None:
        self.slots.append(slot)

    def disconnect(self, slot: Callable | None = None) -> None:
        if slot is None:
            self.slots.clear()
        else:
            self.slots.remove(slot)

    def emit(self, *args) -> None:
        for slot in list(self.slots):
            slot(*args[:_positionalCount(slot, len(args))])


def _positionalCount(function: Callable, available: int) -> int:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(parameter.kind == parameter.VAR_POSITIONAL for parameter in parameters):
        return available
    return min(available, sum(parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
                              for parameter in parameters))


_SIGNALS = ("valueChanged", "currentIndexChanged", "currentNodeChanged", "currentPathChanged",
            "directoryChanged", "clicked", "toggled", "timeout", "textChanged", "stateChanged",
            "moduleAboutToBeUnloaded")


class Widget:
    """Base of every stand-in widget: properties, children, signals, PythonQt-style ``connect``."""

    def __init__(self, *args, **kwargs):
        self._properties: dict[str, Any] = {}
        self._children: list[Widget] = []
        self._signals: dict[str, Signal] = {}
        self.objectName = ""
        self.enabled = True
        self.visible = True
        self.text = ""
        self.toolTip = ""
        self.collapsed = False
        self.isEntered = False

    def __getattr__(self, name):
        if name in _SIGNALS:
            return self._signals.setdefault(name, Signal())
        raise AttributeError(f"{type(self).__name__} stand-in has no attribute {name!r}")

    # QObject
    def property(self, name):
        return self._properties.get(name)

    def setProperty(self, name, value):
        self._properties[name] = value

    def isWidgetType(self) -> bool:
        return True

    def findChildren(self, cls=None):
        found = []
        for child in self._children:
            if cls is None or isinstance(child, cls):
                found.append(child)
            found.extend(child.findChildren(cls))
        return found

    def connect(self, signature: str, slot: Callable) -> None:
        getattr(self, signature.split("(")[0]).connect(slot)

    def disconnect(self, signature: str, slot: Callable | None = None) -> None:
        getattr(self, signature.split("(")[0]).disconnect(slot)

    # What the module calls on various widgets
    def setMRMLScene(self, scene):
        self.mrmlScene = scene

    def layout(self):
        return self

    def addWidget(self, widget):
        self._children.append(widget)

    def setLayout(self, layout):
        pass

    def show(self):
        pass


class _Bounded(Widget):
    """Spin boxes and sliders: a value kept within [minimum, maximum], ``valueChanged`` on change."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.minimum, self.maximum = 0, 99
        self.decimals, self.singleStep = 2, 1
        self._value = 0

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        value = min(max(value, self.minimum), self.maximum)
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)

    def setRange(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def setMinimum(self, minimum):
        self.minimum = minimum

    def setMaximum(self, maximum):
        self.maximum = maximum


class _ComboBox(Widget):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.items: list[str] = []
        self._currentIndex = -1

    def clear(self):
        self.items.clear()
        self._currentIndex = -1

    def addItem(self, text):
        self.items.append(text)
        if self._currentIndex < 0:
            self._currentIndex = 0

    @property
    def count(self):
        return len(self.items)

    @property
    def currentIndex(self):
        return self._currentIndex

    @currentIndex.setter
    def currentIndex(self, index):
        if index != self._currentIndex:
            self._currentIndex = index
            self.currentIndexChanged.emit(index)

    @property
    def currentText(self):
        return self.items[self._currentIndex] if 0 <= self._currentIndex < len(self.items) else ""


class _NodeComboBox(Widget):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.nodeTypes: list[str] = []
        self._node = None

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node):
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)


class _SegmentSelector(_NodeComboBox):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self._selected: list[str] = []

    def setSelectedSegmentIDs(self, ids):
        self._selected = list(ids)

    def selectedSegmentIDs(self):
        return list(self._selected)


class _PathLineEdit(Widget):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self._path = ""
        self.history: list[str] = []
        self.settingKey = ""

    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, path):
        if path != self._path:
            self._path = path
            self.currentPathChanged.emit(path)

    def addCurrentPathToHistory(self):
        if self._path and self._path not in self.history:
            self.history.insert(0, self._path)


class _DirectoryButton(Widget):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self._directory = "."  # what an unset ctkDirectoryButton reports

    @property
    def directory(self):
        return self._directory

    @directory.setter
    def directory(self, directory):
        if directory != self._directory:
            self._directory = directory
            self.directoryChanged.emit(directory)


class _ProgressBar(Widget):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.value = 0
        self.range = (0, 100)

    def setRange(self, minimum, maximum):
        self.range = (minimum, maximum)


class _PlainTextEdit(Widget):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.lines: list[str] = []

    def clear(self):
        self.lines.clear()

    def appendPlainText(self, text):
        self.lines.append(text)


_BEHAVIOUR = {
    "QSpinBox": _Bounded, "QSlider": _Bounded, "QDoubleSpinBox": _Bounded, "ctkSliderWidget": _Bounded,
    "ctkDoubleSpinBox": _Bounded, "ctkDoubleSlider": _Bounded, "qMRMLSliderWidget": _Bounded,
    "qMRMLSpinBox": _Bounded,
    "QComboBox": _ComboBox, "ctkComboBox": _ComboBox,
    "qMRMLNodeComboBox": _NodeComboBox, "qMRMLSegmentSelectorWidget": _SegmentSelector,
    "ctkPathLineEdit": _PathLineEdit, "ctkDirectoryButton": _DirectoryButton,
    "QProgressBar": _ProgressBar, "QPlainTextEdit": _PlainTextEdit,
}


class QSettings:
    """``qt.QSettings`` as one dictionary shared by every instance."""

    store: dict[str, Any] = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value

    def contains(self, key):
        return key in self.store


class QTimer(Widget):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.active = False

    def setInterval(self, interval):
        self.interval = interval

    def start(self, *args):
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active


class QFileDialog:
    """``getExistingDirectory`` returns ``answer`` and records that it was asked."""

    answer = ""
    asked = 0

    @classmethod
    def getExistingDirectory(cls, *args, **kwargs):
        cls.asked += 1
        return cls.answer


def _standInModule(name: str, explicit: dict[str, Any]) -> types.ModuleType:
    """A module whose unknown attributes are distinct stand-in widget classes of that name."""
    module = types.ModuleType(name)
    module.__dict__.update(explicit)

    def moduleGetattr(attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        cls = type(attribute, (_BEHAVIOUR.get(attribute, Widget),), {})
        setattr(module, attribute, cls)
        return cls

    module.__getattr__ = moduleGetattr
    return module


SLICER_WIDGET_CLASSES = ("qMRMLWidget", "qSlicerWidget", "qMRMLNodeComboBox", "qMRMLSliderWidget", "qMRMLSpinBox",
                         "qMRMLRangeWidget", "qMRMLSegmentSelectorWidget", "qMRMLSubjectHierarchyTreeView")


def widgetClass(name: str):
    """The stand-in class for a Qt, CTK or Slicer widget class name."""
    if name in SLICER_WIDGET_CLASSES:
        import slicer

        return getattr(slicer, name)
    return getattr(sys.modules["ctk" if name.startswith("ctk") else "qt"], name)


def loadUI(path: str):
    """The widgets of a .ui file as stand-ins; the top widget's children are the named widgets."""
    root = ElementTree.parse(path).getroot()

    def build(element):
        widget = widgetClass(element.get("class"))()
        widget.objectName = element.get("name")
        for prop in element.findall("property"):
            name = prop.get("name")
            value = prop.find("string")
            if value is not None:
                widget.setProperty(name, value.text)
                continue
            for tag, convert in (("number", int), ("double", float)):
                value = prop.find(tag)
                if value is not None and name in ("minimum", "maximum", "value", "singleStep", "decimals"):
                    setattr(widget, name, convert(value.text))
        for child in element.iter("widget"):
            if child is not element and _parentWidget(element, child):
                widget._children.append(build(child))
        return widget

    def _parentWidget(parent, child):
        """True when ``child`` is a direct widget descendant of ``parent`` (layouts in between)."""
        stack = list(parent)
        while stack:
            element = stack.pop()
            if element is child:
                return True
            if element.tag != "widget":
                stack.extend(list(element))
        return False

    return build(root.find("widget"))


def childWidgetVariables(widget):
    return types.SimpleNamespace(**{child.objectName: child for child in widget.findChildren() if child.objectName})


class Dialogs:
    """Records what the module asked or showed; ``confirm`` is the answer to OK/Cancel questions."""

    def __init__(self):
        self.confirm = True
        self.questions: list[str] = []
        self.errors: list[str] = []

    def confirmOkCancelDisplay(self, text, *args, **kwargs):
        self.questions.append(text)
        return self.confirm

    def errorDisplay(self, text, *args, **kwargs):
        self.errors.append(text)


class Application:
    """``slicer.app``: testing mode, a module manager, processEvents (a hook tests may set).

    ``slicerHome/bin/PythonSlicer`` is a script that runs this test interpreter, standing in
    for Slicer's Python launcher.
    """

    def __init__(self, slicerHome: str, testing: bool = False):
        self.slicerHome = slicerHome
        self.testing = testing
        self.processEventsHook: Callable[[], None] | None = None
        launcher = Path(slicerHome) / "bin" / ("PythonSlicer.bat" if os.name == "nt" else "PythonSlicer")
        launcher.parent.mkdir(parents=True, exist_ok=True)
        if os.name == "nt":
            launcher.write_text(f'@"{sys.executable}" %*\n', encoding="utf-8")
        else:
            launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
            launcher.chmod(0o755)

    def testingEnabled(self):
        return self.testing

    def processEvents(self, *args):
        if self.processEventsHook is not None:
            self.processEventsHook()

    def moduleManager(self):
        return Widget()

    def thread(self):
        return None

    def mainWindow(self):
        return None

    def topLevelWidgets(self):
        return []

    def layoutManager(self):
        return None  # as with --no-main-window: no views


# ---------------------------------------------------------------------------------------
# Loading a release

def _loadPackage(name: str, folder: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _loadModule(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def slicerRelease(release: str, testing: bool = False):
    """Slicer ``release``'s Python code over slicer-core, with the module imported against it.

    Yields a namespace with ``module`` (PowdrOutpaint.py), ``util`` (the release's own
    ``slicer/util.py``, loaded separately), ``packaging`` (5.12 and later, else None),
    ``parameterNodeWrapper``, ``app``, ``dialogs``, ``QFileDialog`` and ``QSettings``.
    """
    import slicer
    import slicer.util

    folder = releaseFolder(release)
    savedModules = {name: module for name, module in sys.modules.items()
                    if name in ("qt", "ctk", "PowdrOutpaint") or name.startswith("slicer.")}
    savedAttributes = dict(vars(slicer))
    savedUtil = dict(vars(slicer.util))
    QSettings.store = {}
    QFileDialog.answer, QFileDialog.asked = "", 0
    dialogs = Dialogs()
    slicerHome = tempfile.mkdtemp(prefix="PowdrOutpaint-SlicerHome-")
    app = Application(slicerHome, testing)
    try:
        sys.modules["qt"] = _standInModule("qt", {"QSettings": QSettings, "QTimer": QTimer,
                                                  "QFileDialog": QFileDialog})
        sys.modules["ctk"] = _standInModule("ctk", {})
        for name in SLICER_WIDGET_CLASSES:
            setattr(slicer, name, type(name, (_BEHAVIOUR.get(name, Widget),), {}))
        i18n = types.ModuleType("slicer.i18n")
        i18n.tr = lambda text: text
        i18n.translate = lambda context, text: text
        sys.modules["slicer.i18n"] = slicer.i18n = i18n
        slicer.app = app
        slicer.modules = types.SimpleNamespace(
            powdroutpaint=types.SimpleNamespace(path=str(MODULE_DIR / "PowdrOutpaint.py")))
        slicer.selfTests = {}
        slicer.util.loadUI = loadUI
        slicer.util.childWidgetVariables = childWidgetVariables
        slicer.util.confirmOkCancelDisplay = dialogs.confirmOkCancelDisplay
        slicer.util.errorDisplay = dialogs.errorDisplay
        slicer.util.showStatusMessage = lambda *args, **kwargs: None
        slicer.util.WaitCursor = contextlib.nullcontext
        slicer.util.tryWithErrorDisplay = _tryWithErrorDisplay(dialogs)

        util = _loadModule(f"slicer_util_{release.replace('.', '_')}", folder / "util.py")
        wrapper = _loadPackage("slicer.parameterNodeWrapper", folder / "parameterNodeWrapper")
        slicer.parameterNodeWrapper = wrapper
        scripted = _loadModule("slicer.ScriptedLoadableModule", folder / "ScriptedLoadableModule.py")
        slicer.ScriptedLoadableModule = scripted
        packaging = None
        if (folder / "packaging.py").is_file():
            packaging = _loadModule("slicer.packaging", folder / "packaging.py")
            slicer.packaging = packaging
        sys.path.insert(0, str(MODULE_DIR))
        module = importlib.import_module("PowdrOutpaint")
        yield types.SimpleNamespace(release=release, module=module, util=util, packaging=packaging,
                                    parameterNodeWrapper=wrapper, scriptedLoadableModule=scripted, app=app,
                                    dialogs=dialogs, QFileDialog=QFileDialog, QSettings=QSettings)
    finally:
        shutil.rmtree(slicerHome, ignore_errors=True)
        if sys.path and sys.path[0] == str(MODULE_DIR):
            sys.path.pop(0)
        for name in [name for name in sys.modules if name in ("qt", "ctk", "PowdrOutpaint")
                     or name.startswith("slicer.") or name.startswith("slicer_util_")]:
            del sys.modules[name]
        sys.modules.update(savedModules)
        for name in set(vars(slicer)) - set(savedAttributes):
            delattr(slicer, name)
        vars(slicer).update(savedAttributes)
        for name in set(vars(slicer.util)) - set(savedUtil):
            delattr(slicer.util, name)
        vars(slicer.util).update(savedUtil)


def _tryWithErrorDisplay(dialogs: Dialogs):
    @contextlib.contextmanager
    def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
        try:
            yield
        except Exception as error:
            dialogs.errors.append(f"{message} {error}" if message else str(error))
            raise

    return tryWithErrorDisplay
