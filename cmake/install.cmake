# Installs the libraries, public headers and a CMake package, so another project can write
#   find_package(modalign REQUIRED)                       # needs only LibTorch
#   target_link_libraries(my_trainer PRIVATE modalign::losses)
# with the blockwise attention and its alignment taps (also OpenMP and a BLAS, which a CPU LibTorch runs on):
#   find_package(modalign REQUIRED COMPONENTS attention)
#   target_link_libraries(my_trainer PRIVATE modalign::attention)
# or, for the model, data and trainer library (needs fmt, spdlog, yaml-cpp, nlohmann_json too):
#   find_package(modalign REQUIRED COMPONENTS library)
#   target_link_libraries(my_tool PRIVATE modalign::modalign)
# Each part has its own export set, so that the losses' targets name no other dependency.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS modalign_losses EXPORT modalignLossesTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS modalign_attention EXPORT modalignAttentionTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS modalign EXPORT modalignTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS modalign_spm LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/losses ${PROJECT_SOURCE_DIR}/lib ${PROJECT_SOURCE_DIR}/trainers
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/modalign FILES_MATCHING PATTERN "*.h")
if(MODALIGN_BUILD_TOOLS)
  install(TARGETS modalign_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  install(PROGRAMS ${PROJECT_SOURCE_DIR}/tools/plot_metrics.py ${PROJECT_SOURCE_DIR}/tools/plot_probe.py
    DESTINATION ${CMAKE_INSTALL_DATADIR}/modalign)
endif()

set(MODALIGN_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/modalign)
install(EXPORT modalignLossesTargets NAMESPACE modalign:: DESTINATION ${MODALIGN_CMAKE_DIR})
install(EXPORT modalignAttentionTargets NAMESPACE modalign:: DESTINATION ${MODALIGN_CMAKE_DIR})
install(EXPORT modalignTargets NAMESPACE modalign:: DESTINATION ${MODALIGN_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/modalignConfig.cmake.in
  ${PROJECT_BINARY_DIR}/modalignConfig.cmake INSTALL_DESTINATION ${MODALIGN_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/modalignConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/modalignConfig.cmake ${PROJECT_BINARY_DIR}/modalignConfigVersion.cmake
  DESTINATION ${MODALIGN_CMAKE_DIR})
