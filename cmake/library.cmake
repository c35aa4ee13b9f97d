# libembstore: the one library every program links, the CLI and the tests
# included, and the one that is installed.
#
# The modules (util, codec, checkpoint, storage, engine, cuda) are object
# libraries; their objects make up libembstore, shared (the default: soname
# libembstore.so.MAJOR, exporting only embstore:: symbols, see embstore.map)
# or static (-DBUILD_SHARED_LIBS=OFF). Nothing of TBB, RocksDB, Boost,
# nlohmann_json or CUDA is in the public headers or in the link interface of
# the shared library; a static library lists them as link-only dependencies,
# which the installed embstoreConfig.cmake then finds.
set(EMBSTORE_MODULES embstore_util embstore_codec embstore_checkpoint embstore_storage
                     embstore_engine embstore_cuda)
add_library(embstore)
add_library(embstore::embstore ALIAS embstore)
foreach(module IN LISTS EMBSTORE_MODULES)
  target_sources(embstore PRIVATE $<TARGET_OBJECTS:${module}>)
endforeach()
target_include_directories(embstore PUBLIC
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
  $<BUILD_INTERFACE:${PROJECT_BINARY_DIR}/include>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_compile_features(embstore PUBLIC cxx_std_20)
# What the modules' objects call. PRIVATE: a shared libembstore hides them; a
# static one exports them as $<LINK_ONLY:...> (embstoreConfig.cmake finds them).
set(EMBSTORE_PRIVATE_DEPS TBB::tbb RocksDB::rocksdb-shared PkgConfig::XXHASH PkgConfig::LIBZIP ZLIB::ZLIB
                          Threads::Threads)
if(EMBSTORE_HAVE_CUDA)
  list(APPEND EMBSTORE_PRIVATE_DEPS CUDA::cudart_static)
endif()
target_link_libraries(embstore PRIVATE ${EMBSTORE_PRIVATE_DEPS})
set_target_properties(embstore PROPERTIES
  VERSION ${PROJECT_VERSION}
  SOVERSION ${PROJECT_VERSION_MAJOR}
  EXPORT_NAME embstore)
if(BUILD_SHARED_LIBS)
  set(EMBSTORE_MAP ${PROJECT_SOURCE_DIR}/cmake/embstore.map)
  target_link_options(embstore PRIVATE "LINKER:--version-script=${EMBSTORE_MAP}")
  # Every symbol resolved at link time (not with sanitizers: their runtimes
  # are provided by the executable).
  if(NOT EMBSTORE_SANITIZE AND NOT EMBSTORE_FUZZ_SANITIZERS)
    target_link_options(embstore PRIVATE "LINKER:-z,defs")
  endif()
  set_property(TARGET embstore APPEND PROPERTY LINK_DEPENDS ${EMBSTORE_MAP})
endif()

# Fuzzing builds instrument the checkpoint readers (checkpoint/CMakeLists.txt):
# whatever links the library links the sanitizer runtimes too.
if(EMBSTORE_FUZZ_SANITIZERS)
  target_link_options(embstore PUBLIC -fsanitize=${EMBSTORE_FUZZ_SANITIZERS})
endif()

# ---- install: headers, library, CMake package, pkg-config -------------------
# Components: Runtime (the shared library), Development (headers, the
# libembstore.so link, CMake and pkg-config files, a static library), Tools
# (the CLI, tools/CMakeLists.txt). They are the three Debian packages
# (cmake/packaging.cmake).
include(CMakePackageConfigHelpers)
set(EMBSTORE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/embstore)
install(TARGETS embstore EXPORT embstoreTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Runtime NAMELINK_COMPONENT Development
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT Runtime
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/embstore
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT Development
        FILES_MATCHING PATTERN "*.h")
install(FILES ${PROJECT_BINARY_DIR}/include/embstore/version.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/embstore COMPONENT Development)
install(EXPORT embstoreTargets NAMESPACE embstore:: DESTINATION ${EMBSTORE_CMAKE_DIR}
        COMPONENT Development)
if(BUILD_SHARED_LIBS)
  set(EMBSTORE_STATIC_LIBRARY OFF)
else()
  set(EMBSTORE_STATIC_LIBRARY ON)
endif()
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/embstoreConfig.cmake.in
  ${PROJECT_BINARY_DIR}/embstoreConfig.cmake INSTALL_DESTINATION ${EMBSTORE_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/embstoreConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/embstoreConfig.cmake
              ${PROJECT_BINARY_DIR}/embstoreConfigVersion.cmake
        DESTINATION ${EMBSTORE_CMAKE_DIR} COMPONENT Development)

# embstore.pc is relocatable: its prefix is found from the file's own place
# (${pcfiledir}), so it is right for `cmake --install --prefix P`, DESTDIR,
# and packages unpacked anywhere. A static library adds what it links.
# (An absolute CMAKE_INSTALL_LIBDIR or INCLUDEDIR is written as it is: not relocatable.)
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(EMBSTORE_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(EMBSTORE_PC_LIBDIR "${CMAKE_INSTALL_FULL_LIBDIR}")
  set(EMBSTORE_PC_INCLUDEDIR "${CMAKE_INSTALL_FULL_INCLUDEDIR}")
else()
  file(RELATIVE_PATH to_prefix /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
  string(REGEX REPLACE "/$" "" to_prefix "${to_prefix}")
  set(EMBSTORE_PC_PREFIX "\${pcfiledir}/${to_prefix}")
  set(EMBSTORE_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
  set(EMBSTORE_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
set(EMBSTORE_PC_PRIVATE "")
if(EMBSTORE_STATIC_LIBRARY)
  set(cuda_libs "")
  if(EMBSTORE_HAVE_CUDA)
    set(cuda_libs " -L${CUDAToolkit_LIBRARY_DIR} -lcudart_static -ldl -lrt")
  endif()
  set(EMBSTORE_PC_PRIVATE
      "Requires.private: libxxhash libzip zlib\nLibs.private: -ltbb -lrocksdb -lpthread${cuda_libs}\n")
endif()
configure_file(${PROJECT_SOURCE_DIR}/cmake/embstore.pc.in ${PROJECT_BINARY_DIR}/embstore.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/embstore.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT Development)
