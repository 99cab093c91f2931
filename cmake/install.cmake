# Install rules: the static library, the public headers and a CMake package, so that another
# project can use
#   find_package(spaattn 0.1 REQUIRED)
#   target_link_libraries(app PRIVATE spaattn::spaattn)
# The package brings its dependencies along (Threads; the CUDA runtime when the kernels are in).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS spaattn EXPORT spaattnTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/spaattn
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(SPAATTN_TOOLS)
  install(TARGETS spaattn_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

set(SPAATTN_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/spaattn)
install(EXPORT spaattnTargets NAMESPACE spaattn:: DESTINATION ${SPAATTN_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/spaattnConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/spaattnConfig.cmake
                              INSTALL_DESTINATION ${SPAATTN_CMAKE_DIR})
# 0.x: minor versions may change the API, so a request is met by the same minor version only.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/spaattnConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/spaattnConfig.cmake
              ${PROJECT_BINARY_DIR}/spaattnConfigVersion.cmake
        DESTINATION ${SPAATTN_CMAKE_DIR})
