# Stand-in for Slicer's SlicerExtensionCPack.cmake (see SlicerConfig.cmake): the real file's
# sanity checks, then the EXTENSION_* values written for the test, one "NAME VALUE" a line.
if("${EXTENSION_NAME}" STREQUAL "")
  message(FATAL_ERROR "error: EXTENSION_NAME is either NOT defined or empty.")
endif()
foreach(var EXTENSION_README_FILE EXTENSION_LICENSE_FILE)
  if(NOT EXISTS "${${var}}")
    message(FATAL_ERROR "error: ${var} points to an inexistent file: ${${var}}")
  endif()
endforeach()
set(_summary "")
foreach(var EXTENSION_NAME EXTENSION_HOMEPAGE EXTENSION_CATEGORY EXTENSION_ICONURL EXTENSION_SCREENSHOTURLS
            EXTENSION_DEPENDS EXTENSION_README_FILE EXTENSION_LICENSE_FILE)
  string(APPEND _summary "${var} ${${var}}\n")
endforeach()
file(WRITE ${CMAKE_BINARY_DIR}/standin_extension_summary.txt "${_summary}")
