# Stand-in for Slicer's UseSlicer.cmake: see the comment at the top of SlicerConfig.cmake.

# Extension defaults: an extension that names none of these gets Slicer's own
if(NOT DEFINED EXTENSION_NAME)
  set(EXTENSION_NAME ${PROJECT_NAME})
endif()
if(NOT DEFINED EXTENSION_LICENSE_FILE)
  set(EXTENSION_LICENSE_FILE ${Slicer_LICENSE_FILE})
endif()
if(NOT DEFINED EXTENSION_README_FILE)
  set(EXTENSION_README_FILE ${Slicer_README_FILE})
endif()

# Testing: BUILD_TESTING as an option (real UseSlicer: include(CTest)), tests through ExternalData
option(BUILD_TESTING "Build the testing tree." OFF)
if(BUILD_TESTING)
  enable_testing()
endif()
include(ExternalData)
set(Slicer_ExternalData_DATA_MANAGEMENT_TARGET ${PROJECT_NAME}Data)

# The real Slicer and CTK macros, found on CMAKE_MODULE_PATH (../shared/slicer)
include(ctkFunctionExtractOptimizedLibrary)
include(ctkMacroCompilePythonScript)
include(SlicerMacroPythonTesting)
include(SlicerMacroConfigureGenericPythonModuleTests)
include(SlicerMacroBuildScriptedModule)
