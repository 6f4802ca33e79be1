# Stand-in for CTK's ctkMacroParseArguments.cmake (see SlicerConfig.cmake): every keyword of
# arg_names takes values, every name of option_names is a flag; an absent keyword is undefined.
macro(ctkMacroParseArguments prefix arg_names option_names)
  cmake_parse_arguments(${prefix} "${option_names}" "" "${arg_names}" ${ARGN})
endmacro()
