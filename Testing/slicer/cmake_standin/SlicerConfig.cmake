#[=======================================================================[
Stand-in for a Slicer build tree's SlicerConfig.cmake, used only by
Testing/slicer/test_cmake_build.py (found with -DSlicer_DIR=<this folder>).

It lets the extension's CMakeLists.txt run Slicer's REAL
SlicerMacroBuildScriptedModule.cmake, SlicerMacroPythonTesting.cmake and
SlicerMacroConfigureGenericPythonModuleTests.cmake (from ../shared/slicer/<release>/cmake)
and CTK's REAL ctkMacroCompilePythonScript.cmake and ctkFunctionExtractOptimizedLibrary.cmake
(from ../shared/slicer/ctk-cmake). Nothing of Slicer or CTK is copied here. The test passes:
  STANDIN_SLICER_CMAKE_DIR   ../shared/slicer/<release>/cmake
  STANDIN_CTK_CMAKE_DIR      ../shared/slicer/ctk-cmake
  STANDIN_SLICER_VERSION     <major>.<minor> of that release (names lib/Slicer-<major>.<minor>)
  PYTHON_EXECUTABLE          the Python that byte-compiles the scripts (the test's own)
  PYTHON_LIBRARY             that Python's shared library (only put on LD_LIBRARY_PATH)

The files in this folder are written for the test, not taken from Slicer or CTK. What each
leaves UNVERIFIED about real Slicer:
- SlicerConfig.cmake (this file): sets only the variables the real macros read, with the
  values a Linux Slicer build tree has (lib/Slicer-X.Y/qt-scripted-modules, install root "./").
  Not verified: the rest of the real SlicerConfig.cmake (Slicer_EXTERNAL_PROJECTS and their
  find_package calls, VTK/ITK/CTK/Qt configs, macOS bundle locations
  Slicer_BUNDLE_EXTENSIONS_LOCATION, Windows paths), and that real Slicer finds Python with
  find_package(PythonInterp/PythonLibs): here PYTHONINTERP_FOUND/PYTHONLIBS_FOUND are set
  directly and the interpreter is the test's Python, not Slicer's python-real.
- UseSlicer.cmake: includes the real macros and applies the extension defaults
  (EXTENSION_NAME, EXTENSION_LICENSE_FILE/EXTENSION_README_FILE falling back to Slicer's).
  Not verified: everything else the real UseSlicer.cmake does (compiler flags, build type,
  C++ standard, Slicer_ADDITIONAL_LAUNCHER_SETTINGS, the CTest/CDash setup
  (include(CTest) is replaced by enable_testing()), ExternalData data targets).
- ctkMacroParseArguments.cmake: cmake_parse_arguments with every keyword multi-valued, as
  CTK's own parser treats them. Not verified: CTK's DEFAULT_ARGS handling (unused here).
- ctk_compile_python_scripts.cmake.in: writes the byte-compile script the real CTK template
  writes (py_compile of every script in place, a failed compile is printed, not fatal, as in
  CTK) and runs it. Not verified: CTK's exact script text, the LD_LIBRARY_PATH/PATH setup for
  Slicer's own python-real, and compiling with Slicer's Python version (3.9 in 5.8, 3.12 in
  5.10/5.12): the .pyc files here are for the test's Python; Slicer recompiles on import.
- qSlicerModuleGenericTest.py.in: an empty stand-in for Slicer's generic module test template.
  Not verified: what that generic test does when it runs in Slicer.
- SlicerExtensionGenerateConfig.cmake: empty. Not verified: the <Extension>Config.cmake that
  other extensions use to depend on this one.
- SlicerExtensionCPack.cmake: only the real file's sanity checks (EXTENSION_NAME set, the
  EXTENSION_README_FILE and EXTENSION_LICENSE_FILE exist) and a summary of the EXTENSION_*
  values for the test. Not verified: repository info extraction (git), the generated .s4ext
  / .json extension description, the launcher, CPack packaging and upload, macOS fix-up.
- Slicer (the launcher named by Slicer_LAUNCHER_EXECUTABLE): a script that only fails, so that
  ctest can list the registered tests with their command lines. Not verified: that the tests
  pass when Slicer's launcher runs them (they are listed with ctest -N, never run).
Also unverified: building with the CMake version Slicer's own build uses (the test uses the
PyPI cmake package, 4.x, which warns about policy CMP0177 for the "./lib/..." install
destinations of the real macros), that the Extensions Manager unpacks the package into
Slicer's extensions folder and that Slicer's module factory finds the module there
(the test imports the installed folder directly), and Windows/macOS builds.
#]=======================================================================]

foreach(var STANDIN_SLICER_CMAKE_DIR STANDIN_CTK_CMAKE_DIR STANDIN_SLICER_VERSION PYTHON_EXECUTABLE)
  if("${${var}}" STREQUAL "")
    message(FATAL_ERROR "Slicer stand-in: pass -D${var}=... (see ${CMAKE_CURRENT_LIST_FILE})")
  endif()
endforeach()

set(Slicer_FOUND TRUE)
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake)
set(Slicer_LICENSE_FILE ${STANDIN_SLICER_CMAKE_DIR}/../License.txt)
# Slicer_README_FILE is left unset: an extension that does not name its own README fails the
# CPack stand-in's existence check (real Slicer would fall back to Slicer's README.txt).

# Module folders of a Slicer build tree (SlicerDirectories.cmake), relative to the build/install root
set(Slicer_USE_PYTHONQT ON)
set(Slicer_LIB_DIR lib/Slicer-${STANDIN_SLICER_VERSION})
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_LIB_DIR}/qt-scripted-modules)
set(Slicer_QTLOADABLEMODULES_LIB_DIR ${Slicer_LIB_DIR}/qt-loadable-modules)
set(Slicer_CLIMODULES_LIB_DIR ${Slicer_LIB_DIR}/cli-modules)
set(Slicer_INSTALL_ROOT "./")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_INSTALL_ROOT}${Slicer_QTSCRIPTEDMODULES_LIB_DIR})

# Python (ctkMacroCompilePythonScript reads these; a Slicer build tree provides Slicer's Python)
set(PYTHONINTERP_FOUND TRUE)
set(PYTHONLIBS_FOUND TRUE)
set(PYTHON_LIBRARIES "${PYTHON_LIBRARY}")
if("${PYTHON_LIBRARIES}" STREQUAL "")
  set(PYTHON_LIBRARIES "${PYTHON_EXECUTABLE}")  # only its folder is used, for LD_LIBRARY_PATH
endif()

# Testing (SlicerMacroPythonTesting.cmake, SlicerMacroConfigureGenericPythonModuleTests.cmake)
set(Slicer_LAUNCHER_EXECUTABLE ${CMAKE_CURRENT_LIST_DIR}/Slicer)
set(Slicer_PYTHON_MODULE_TEST_TEMPLATES_DIR ${CMAKE_CURRENT_LIST_DIR})
set(CTK_CMAKE_DIR ${CMAKE_CURRENT_LIST_DIR})  # ctkMacroParseArguments.cmake, ctk_compile_python_scripts.cmake.in
list(APPEND CMAKE_MODULE_PATH ${STANDIN_SLICER_CMAKE_DIR} ${STANDIN_CTK_CMAKE_DIR})
