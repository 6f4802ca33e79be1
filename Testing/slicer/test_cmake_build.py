"""The extension built and installed with CMake through Slicer's and CTK's REAL build macros.

``../shared/slicer/<release>/cmake`` holds Slicer's ``SlicerMacroBuildScriptedModule.cmake``,
``SlicerMacroPythonTesting.cmake`` and ``SlicerMacroConfigureGenericPythonModuleTests.cmake``;
``../shared/slicer/ctk-cmake`` holds CTK's ``ctkMacroCompilePythonScript.cmake`` and
``ctkFunctionExtractOptimizedLibrary.cmake``. The repository's own ``CMakeLists.txt`` is
configured (``BUILD_TESTING=ON``), built and installed through them, with the smallest
stand-in for a Slicer build tree, ``cmake_standin/`` (its ``SlicerConfig.cmake`` says what each
stand-in file leaves unverified). ``cmake`` and ``ctest`` come from the PyPI ``cmake`` package.

Then the INSTALLED module, and nothing of the repository, runs the batch-mode logic on a
BraTS case under slicer-core with the bundled demo model.

Tests skip with a message when ``../shared/slicer`` or the BraTS case is absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_SOURCE_DIR = REPOSITORY / "PowdrOutpaint"
STANDIN_DIR = Path(__file__).resolve().parent / "cmake_standin"
SHARED_SLICER = REPOSITORY.parent / "shared" / "slicer"
CTK_CMAKE_DIR = SHARED_SLICER / "ctk-cmake"
#: release folder -> Slicer_VERSION_MAJOR.Slicer_VERSION_MINOR (names lib/Slicer-X.Y)
RELEASES = {"v5.8.0": "5.8", "v5.10.0": "5.10", "v5.12.3": "5.12"}
CURRENT_RELEASE = "v5.12.3"
MODEL_NAME = "powdr_demo_brain_t1.pt"
REPOSITORY_MODEL = REPOSITORY / "Resources" / "Models" / MODEL_NAME
RAW_URL = re.compile(r"https://raw\.githubusercontent\.com/PowdrOutpaint/PowdrOutpaint/main/(\S+)")
EXPECTED_CTESTS = {"py_PowdrOutpaint", "py_nomainwindow_qSlicerPowdrOutpaintModuleGenericTest"}


# ---------------------------------------------------------------------------- helpers
def cmakeTool(name: str) -> str:
    """``cmake``/``ctest`` of the PyPI cmake package (a test requirement), else the venv's or PATH's."""
    candidates = []
    try:
        import cmake

        candidates.append(Path(cmake.CMAKE_BIN_DIR) / name)
    except ImportError:
        pass
    candidates.append(Path(sys.executable).parent / name)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} not found: install the test requirements (pip install -e '.[test]', which has cmake>=3.20)")


def cmakeVariable(cmakeText: str, variable: str) -> str:
    match = re.search(rf"^\s*set\({variable}\s+(.*?)\)", cmakeText, re.S | re.M)
    assert match, f"{variable} is not set"
    return match.group(1)


def listedFiles(variable: str, cmakeText: str | None = None) -> list[str]:
    """Files of a list in PowdrOutpaint/CMakeLists.txt, read from the file (others edit the lists)."""
    if cmakeText is None:
        cmakeText = (MODULE_SOURCE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    moduleName = cmakeVariable(cmakeText, "MODULE_NAME").strip()
    body = "\n".join(line.split("#", 1)[0] for line in cmakeVariable(cmakeText, variable).splitlines())
    files = [item.replace("${MODULE_NAME}", moduleName) for item in body.split()]
    assert files, f"{variable} is empty"
    return files


def missingSharedMessage(release: str) -> str | None:
    needed = [SHARED_SLICER / release / "cmake" / "SlicerMacroBuildScriptedModule.cmake",
              SHARED_SLICER / release / "cmake" / "SlicerMacroPythonTesting.cmake",
              CTK_CMAKE_DIR / "ctkMacroCompilePythonScript.cmake"]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        return (f"Slicer's CMake sources not found ({', '.join(missing)}): these tests need "
                "../shared/slicer beside the repository (see ../shared/slicer/README.md)")
    return None


def pythonLibrary() -> str:
    libraryDir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    return str(Path(libraryDir) / library) if libraryDir and library else ""


def run(command: list[str], what: str, **options) -> subprocess.CompletedProcess:
    completed = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=300,
                               **options)
    assert completed.returncode == 0, (
        f"{what} failed ({completed.returncode}): {' '.join(map(str, command))}\n"
        f"--- stdout\n{completed.stdout[-6000:]}\n--- stderr\n{completed.stderr[-6000:]}")
    return completed


@dataclass
class Build:
    release: str
    sourceDir: Path
    buildDir: Path
    prefix: Path
    configureOutput: str = ""
    installOutput: str = ""
    seconds: dict = field(default_factory=dict)

    @property
    def libDir(self) -> str:
        return f"lib/Slicer-{RELEASES[self.release]}/qt-scripted-modules"

    @property
    def buildModuleDir(self) -> Path:
        return self.buildDir / self.libDir

    @property
    def installedModuleDir(self) -> Path:
        return self.prefix / self.libDir

    def configure(self):
        started = time.monotonic()
        completed = run([cmakeTool("cmake"), "-S", self.sourceDir, "-B", self.buildDir,
                         f"-DSlicer_DIR={STANDIN_DIR}",
                         f"-DSTANDIN_SLICER_CMAKE_DIR={SHARED_SLICER / self.release / 'cmake'}",
                         f"-DSTANDIN_CTK_CMAKE_DIR={CTK_CMAKE_DIR}",
                         f"-DSTANDIN_SLICER_VERSION={RELEASES[self.release]}",
                         f"-DPYTHON_EXECUTABLE={sys.executable}", f"-DPYTHON_LIBRARY={pythonLibrary()}",
                         "-DBUILD_TESTING=ON"], "CMake configuration")
        self.configureOutput = completed.stdout + completed.stderr
        self.seconds["configure"] = time.monotonic() - started

    def build(self):
        started = time.monotonic()
        run([cmakeTool("cmake"), "--build", self.buildDir, "--parallel", "2"], "CMake build")
        self.seconds["build"] = self.seconds.get("build", 0.0) + time.monotonic() - started

    def install(self):
        started = time.monotonic()
        completed = run([cmakeTool("cmake"), "--install", self.buildDir, "--prefix", self.prefix], "CMake install")
        self.installOutput = completed.stdout
        self.seconds["install"] = time.monotonic() - started

    def manifest(self) -> list[str]:
        return (self.buildDir / "install_manifest.txt").read_text(encoding="utf-8").splitlines()

    def summary(self) -> dict[str, str]:
        """EXTENSION_* values as CMake evaluated them (written by the stand-in SlicerExtensionCPack.cmake)."""
        lines = (self.buildDir / "standin_extension_summary.txt").read_text(encoding="utf-8").splitlines()
        return dict((line.split(" ", 1) + [""])[:2] for line in lines if line)


def installProblems(build: Build, sourceModuleDir: Path = MODULE_SOURCE_DIR,
                    model: Path = REPOSITORY_MODEL) -> list[str]:
    """What is wrong with an installed tree: every listed file installed once, compiled, nothing else."""
    problems = []
    cmakeText = (sourceModuleDir / "CMakeLists.txt").read_text(encoding="utf-8")
    installed = build.installedModuleDir
    if not installed.is_dir():
        return [f"no installed module folder {installed}"]
    expected = set()
    for script in listedFiles("MODULE_PYTHON_SCRIPTS", cmakeText):
        path = installed / script
        pyc = path.parent / "__pycache__" / f"{path.stem}.{sys.implementation.cache_tag}.pyc"
        expected |= {path, pyc}
        if not path.is_file():
            problems.append(f"listed script not installed: {script}")
            continue
        if path.read_bytes() != (sourceModuleDir / script).read_bytes():
            problems.append(f"installed script differs from the source: {script}")
        if not pyc.is_file():
            problems.append(f"listed script not byte-compiled: {script} (no {pyc.relative_to(installed)})")
            continue
        header = pyc.read_bytes()[:16]
        stat = path.stat()
        valid = (header[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(header[4:8], "little") == 0
                 and int.from_bytes(header[8:12], "little") == int(stat.st_mtime) & 0xFFFFFFFF
                 and int.from_bytes(header[12:16], "little") == stat.st_size & 0xFFFFFFFF)
        if not valid:
            problems.append(f"installed .pyc is not valid for the installed source: {script}")
    for resource in listedFiles("MODULE_PYTHON_RESOURCES", cmakeText):
        path = installed / resource
        expected.add(path)
        if not path.is_file() or path.read_bytes() != (sourceModuleDir / resource).read_bytes():
            problems.append(f"listed resource not installed as in the source: {resource}")

    installedModel = installed / "Resources" / "Models" / MODEL_NAME
    expected.add(installedModel)
    models = sorted(path for path in build.prefix.rglob("*.pt"))
    if models != [installedModel]:
        problems.append(f"expected one model, at {installedModel}; installed: {[str(path) for path in models]}")
    elif installedModel.read_bytes() != model.read_bytes():
        problems.append("the installed model differs from the repository's")
    entries = [entry for entry in build.manifest() if entry.endswith(".pt")]
    if len(entries) != 1:
        problems.append(f"the model is installed {len(entries)} times (install_manifest.txt): {entries}")
    mentions = re.findall(rf"^-- (?:Installing|Up-to-date): .*{re.escape(MODEL_NAME)}$", build.installOutput, re.M)
    if len(mentions) != 1:
        problems.append(f"cmake --install handled the model {len(mentions)} times: {mentions}")

    extra = {path for path in build.prefix.rglob("*") if path.is_file()} - expected
    if extra:
        problems.append(f"installed but not listed: {sorted(str(path.relative_to(build.prefix)) for path in extra)}")
    return problems


_builds: dict[tuple[str, str], Build] = {}


def builtAndInstalled(release: str, tmp_path_factory) -> Build:
    """The repository configured, built and installed for ``release`` (once per session)."""
    message = missingSharedMessage(release)
    if message:
        pytest.skip(message)
    key = (release, str(REPOSITORY))
    if key not in _builds:
        root = tmp_path_factory.mktemp(f"cmake-{release}")
        build = Build(release, REPOSITORY, root / "build", root / "install")
        build.configure()
        build.build()
        build.install()
        _builds[key] = build
    return _builds[key]


@pytest.fixture(params=list(RELEASES))
def release(request):
    return request.param


# ---------------------------------------------------------------------------- static checks
def test_extension_urls_name_files_in_the_repository():
    cmake = (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")
    icon = cmakeVariable(cmake, "EXTENSION_ICONURL").strip('"')
    screenshots = cmakeVariable(cmake, "EXTENSION_SCREENSHOTURLS").strip('"').split()
    for url in [icon] + screenshots:
        match = RAW_URL.fullmatch(url)
        if match:
            assert (REPOSITORY / match.group(1)).is_file(), f"{url} names {match.group(1)}, absent from the repository"
    assert RAW_URL.fullmatch(icon), icon
    assert "docs/screenshot.png" not in cmake


def test_licence_is_the_projects_own():
    licence = (REPOSITORY / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence and "Copyright 2026 PowdrOutpaint authors" in licence
    cmake = (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"set\(EXTENSION_LICENSE_FILE \$\{CMAKE_CURRENT_SOURCE_DIR\}/LICENSE\)", cmake)
    assert re.search(r"set\(EXTENSION_README_FILE \$\{CMAKE_CURRENT_SOURCE_DIR\}/README\.md\)", cmake)


# ---------------------------------------------------------------------------- build and install
def test_build_and_install_with_slicers_macros(release, tmp_path_factory):
    build = builtAndInstalled(release, tmp_path_factory)
    assert "Configuring Scripted module: PowdrOutpaint" in build.configureOutput

    problems = installProblems(build)
    assert not problems, "\n".join(problems)

    # What CMake evaluated for the extension description and package
    summary = build.summary()
    assert summary["EXTENSION_NAME"] == "PowdrOutpaint"
    assert Path(summary["EXTENSION_LICENSE_FILE"]) == REPOSITORY / "LICENSE"
    assert Path(summary["EXTENSION_README_FILE"]) == REPOSITORY / "README.md"
    for url in [summary["EXTENSION_ICONURL"]] + summary["EXTENSION_SCREENSHOTURLS"].split():
        match = RAW_URL.fullmatch(url)
        assert match and (REPOSITORY / match.group(1)).is_file(), url

    # BUILD_TESTING=ON: the tests Slicer's macros registered (listed, not run: no Slicer here)
    ctest = cmakeTool("ctest")
    listing = run([ctest, "--test-dir", build.buildDir, "-N"], "ctest -N").stdout
    assert set(re.findall(r"Test\s+#\d+: (\S+)", listing)) == EXPECTED_CTESTS, listing
    tests = {test["name"]: test for test in json.loads(
        run([ctest, "--test-dir", build.buildDir, "--show-only=json-v1"], "ctest --show-only").stdout)["tests"]}
    selfTest = tests["py_PowdrOutpaint"]["command"]
    assert selfTest[0] == str(STANDIN_DIR / "Slicer") and "--testing" in selfTest
    assert str(build.buildModuleDir) in selfTest  # --additional-module-paths: the build tree's module folder
    assert selfTest[-1].startswith("import slicer.testing; slicer.testing.runUnitTest(")
    assert selfTest[-1].endswith(", 'PowdrOutpaint')")
    generic = tests["py_nomainwindow_qSlicerPowdrOutpaintModuleGenericTest"]["command"]
    assert "--no-main-window" in generic and "--disable-cli-modules" in generic
    assert (build.buildDir / "PowdrOutpaint" / "qSlicerPowdrOutpaintModuleGenericTest.py").is_file()
    for test in tests.values():
        assert {"name": "RUN_SERIAL", "value": True} in test["properties"]


# ---------------------------------------------------------------------------- the installed module runs
WORKER_PROBE = ("import importlib.util, json, sys; "
                "print(json.dumps({'origin': importlib.util.find_spec('powdr_outpaint').origin, 'path': sys.path}))")

CHILD = textwrap.dedent('''
    import json, os, subprocess, sys
    installedModuleDir, repositoryModuleDir, imagePath, segmentationPath, reportPath = sys.argv[1:6]
    sys.path.insert(0, installedModuleDir)
    report = {"sysPath": list(sys.path)}

    import numpy as np
    import slicer
    import slicer.util
    import vtk

    import PowdrOutpaintLib
    from PowdrOutpaintLib import PowdrOutpaintLogic, defaultCheckpointPath
    from PowdrOutpaintLib import logic as logicModule

    report["libraryFile"] = PowdrOutpaintLib.__file__
    report["defaultCheckpoint"] = defaultCheckpointPath()

    workers = []
    RealWorker = logicModule.WorkerProcess

    class RecordingWorker(RealWorker):
        def __init__(self, args, env=None, cwd=None, **options):
            workers.append({"args": [str(arg) for arg in args], "env": dict(env or os.environ), "cwd": cwd})
            super().__init__(args, env=env, cwd=cwd, **options)

    logicModule.WorkerProcess = RecordingWorker

    # What the application would provide (as Testing/slicer/conftest.py)
    scene = slicer.vtkMRMLScene()
    applicationLogic = slicer.vtkSlicerApplicationLogic()
    applicationLogic.SetMRMLScene(scene)
    moduleLogics = {"Colors": slicer.vtkSlicerColorLogic(), "Volumes": slicer.vtkSlicerVolumesLogic(),
                    "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
                    "Sequences": slicer.vtkSlicerSequencesLogic()}
    for name, moduleLogic in moduleLogics.items():
        moduleLogic.SetMRMLApplicationLogic(applicationLogic)
        moduleLogic.SetMRMLScene(scene)
        applicationLogic.SetModuleLogic(name, moduleLogic)
    slicer.mrmlScene = scene
    volumesLogic = moduleLogics["Volumes"]
    volume = volumesLogic.AddArchetypeVolume(imagePath, "t1", 0)
    labelmap = volumesLogic.AddArchetypeVolume(segmentationPath, "seg", 1)
    volumeArray = np.array(slicer.util.arrayFromVolume(volume))
    lesion = slicer.util.arrayFromVolume(labelmap) > 0

    def ijkToRas(node):
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    result = PowdrOutpaintLogic().process(volume, labelmap, None, numberOfSamples=2, numberOfSteps=2, seed=0,
                                          device="cpu")
    report["lesionVoxels"] = int(lesion.sum())
    report["samples"] = []
    for node in result.sampleNodes:
        sample = slicer.util.arrayFromVolume(node)
        report["samples"].append({
            "name": node.GetName(),
            "dimensionsMatch": node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions(),
            "ijkToRasMatch": bool(np.array_equal(ijkToRas(node), ijkToRas(volume))),
            "lesionMismatches": int(np.count_nonzero(sample[lesion] != volumeArray[lesion])),
            "changedOutsideLesion": int(np.count_nonzero(sample[~lesion] != volumeArray[~lesion])),
        })

    report["workers"] = [{"args": worker["args"], "cwd": worker["cwd"],
                          "pythonPath": worker["env"].get("PYTHONPATH", "")} for worker in workers]
    if workers:
        worker = workers[0]
        probe = subprocess.run([worker["args"][0], "-c", sys.argv[6]], env=worker["env"], cwd=worker["cwd"],
                               capture_output=True, text=True)
        report["workerProbe"] = json.loads(probe.stdout) if probe.returncode == 0 else probe.stderr
    with open(reportPath, "w", encoding="utf-8") as file:
        json.dump(report, file)
''')


def isolatedPython(folder: Path) -> str:
    """A Python with this environment's packages but not its path entries (the editable install adds the
    repository's PowdrOutpaint folder to sys.path): the installed module must run without the repository."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    sitePackages = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                       capture_output=True, text=True, check=True).stdout.strip())
    # Lines of a .pth file that are folders are added to sys.path as they are: the .pth files inside them,
    # such as the editable install's, are not read.
    ownSitePackages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (sitePackages / "powdr_test_packages.pth").write_text("\n".join(sorted(ownSitePackages)) + "\n")
    return str(python)


def test_installed_module_runs_the_logic_on_brats(bratsCase, tmp_path_factory, tmp_path):
    build = builtAndInstalled(CURRENT_RELEASE, tmp_path_factory)
    installed = build.installedModuleDir
    python = isolatedPython(tmp_path / "python")
    script = tmp_path / "run_installed_logic.py"
    script.write_text(CHILD, encoding="utf-8")
    reportPath = tmp_path / "report.json"
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    completed = subprocess.run(
        [python, script, installed, MODULE_SOURCE_DIR, bratsCase["image"], bratsCase["segmentation"], reportPath,
         WORKER_PROBE], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, (
        f"the installed logic failed:\n{completed.stdout[-4000:]}\n{completed.stderr[-8000:]}")
    report = json.loads(reportPath.read_text(encoding="utf-8"))

    def inside(path, folder) -> bool:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))

    # Only the installed tree: not the repository's module folder
    assert all(os.path.realpath(entry) != os.path.realpath(MODULE_SOURCE_DIR) for entry in report["sysPath"] if entry)
    assert inside(report["libraryFile"], installed), report["libraryFile"]
    assert Path(report["defaultCheckpoint"]).name == MODEL_NAME and inside(report["defaultCheckpoint"], build.prefix)
    assert Path(report["defaultCheckpoint"]).is_file()

    # The worker ran the installed engine
    assert len(report["workers"]) == 1
    worker = report["workers"][0]
    assert worker["args"][:4] == [python, "-m", "powdr_outpaint", "sample"], worker["args"]
    assert worker["args"][worker["args"].index("--checkpoint") + 1] == report["defaultCheckpoint"]
    assert os.path.realpath(worker["cwd"]) == os.path.realpath(installed)
    assert os.path.realpath(worker["pythonPath"].split(os.pathsep)[0]) == os.path.realpath(installed)
    probe = report["workerProbe"]
    assert isinstance(probe, dict), f"probing the worker's Python failed: {probe}"
    assert inside(probe["origin"], installed / "powdr_outpaint"), probe["origin"]
    assert all(os.path.realpath(entry) != os.path.realpath(MODULE_SOURCE_DIR) for entry in probe["path"] if entry)

    # The samples: the lesion kept exactly, on the input's grid
    assert report["lesionVoxels"] > 0
    assert len(report["samples"]) == 2
    for sample in report["samples"]:
        assert sample["dimensionsMatch"] and sample["ijkToRasMatch"], sample
        assert sample["lesionMismatches"] == 0, sample
        assert sample["changedOutsideLesion"] > 0, sample


# ---------------------------------------------------------------------------- a copy of the sources
def copyOfTheSources(folder: Path) -> Path:
    """What the build reads from the repository, copied (to change files without touching the repository)."""
    listed = listedFiles("MODULE_PYTHON_SCRIPTS") + listedFiles("MODULE_PYTHON_RESOURCES") + ["CMakeLists.txt"]
    for name in listed:
        (folder / "PowdrOutpaint" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MODULE_SOURCE_DIR / name, folder / "PowdrOutpaint" / name)
    for name in ("CMakeLists.txt", "LICENSE", "README.md", f"Resources/Models/{MODEL_NAME}"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPOSITORY / name, folder / name)
    return folder


@pytest.fixture
def sourceCopy(tmp_path):
    message = missingSharedMessage(CURRENT_RELEASE)
    if message:
        pytest.skip(message)
    return copyOfTheSources(tmp_path / "source")


def test_rebuilt_model_is_picked_up(sourceCopy, tmp_path):
    build = Build(CURRENT_RELEASE, sourceCopy, tmp_path / "build", tmp_path / "install")
    build.configure()
    build.build()
    copied = build.buildModuleDir / "Resources" / "Models" / MODEL_NAME
    assert copied.read_bytes() == REPOSITORY_MODEL.read_bytes()

    model = sourceCopy / "Resources" / "Models" / MODEL_NAME
    model.write_bytes(b"a retrained model")
    later = time.time() + 2
    os.utime(model, (later, later))
    build.build()  # no new configuration
    assert copied.read_bytes() == b"a retrained model"
    build.install()
    assert not installProblems(build, sourceCopy / "PowdrOutpaint", model)


def test_the_checks_catch_packaging_mistakes(sourceCopy, tmp_path):
    """A model installed twice, a script not installed or not compiled: each is reported."""
    cmakeLists = sourceCopy / "PowdrOutpaint" / "CMakeLists.txt"
    cmakeLists.write_text(cmakeLists.read_text(encoding="utf-8") + textwrap.dedent('''
        install(FILES ${MODULE_MODEL_FILES}
          DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/Resources/Models COMPONENT RuntimeLibraries)
        '''), encoding="utf-8")
    build = Build(CURRENT_RELEASE, sourceCopy, tmp_path / "build", tmp_path / "install")
    build.configure()
    build.build()
    build.install()
    problems = installProblems(build, sourceCopy / "PowdrOutpaint")
    assert any("the model is installed 2 times" in problem for problem in problems), problems

    script = listedFiles("MODULE_PYTHON_SCRIPTS")[-1]
    (build.installedModuleDir / script).unlink()
    assert f"listed script not installed: {script}" in installProblems(build, sourceCopy / "PowdrOutpaint")
    other = build.installedModuleDir / listedFiles("MODULE_PYTHON_SCRIPTS")[0]
    for pyc in (other.parent / "__pycache__").glob(f"{other.stem}.*.pyc"):
        pyc.unlink()
    assert any(problem.startswith(f"listed script not byte-compiled: {other.name}")
               for problem in installProblems(build, sourceCopy / "PowdrOutpaint"))

    # A listed script that does not exist stops the configuration (slicerMacroBuildScriptedModule)
    cmakeLists.write_text(cmakeLists.read_text(encoding="utf-8").replace(
        "set(MODULE_PYTHON_SCRIPTS\n", "set(MODULE_PYTHON_SCRIPTS\n  PowdrOutpaintLib/missing_script.py\n"),
        encoding="utf-8")
    with pytest.raises(AssertionError) as raised:
        build.configure()
    assert ("given nonexistent file or directory 'PowdrOutpaintLib/missing_script.py'"
            in " ".join(str(raised.value).split()))
