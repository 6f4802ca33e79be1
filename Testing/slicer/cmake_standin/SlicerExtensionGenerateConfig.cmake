# Stand-in for Slicer's SlicerExtensionGenerateConfig.cmake: empty (see SlicerConfig.cmake).
