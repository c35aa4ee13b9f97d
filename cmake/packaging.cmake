# Debian packages: `cpack -G DEB` (in a build directory configured with
# -DCMAKE_INSTALL_PREFIX=/usr) writes three packages from the install
# components:
#   libembstore<MAJOR>  Runtime      the shared library
#   libembstore-dev     Development  headers, libembstore.so, CMake package, embstore.pc
#   embstore-tools      Tools        the `embstore` CLI
# dpkg-shlibdeps computes each package's library dependencies (TBB, RocksDB,
# libzip, ...); libembstore-dev and embstore-tools depend on the runtime
# package of exactly this version. tools/check_install.sh builds and unpacks
# them in CI.
set(EMBSTORE_RUNTIME_PACKAGE libembstore${PROJECT_VERSION_MAJOR})
set(CPACK_PACKAGE_NAME embstore)
set(CPACK_PACKAGE_VENDOR "embstore developers")
set(CPACK_PACKAGE_CONTACT "embstore developers <embstore@localhost>")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "embedding tables served from memory-mapped files, with embedding-bag queries")
set(CPACK_PACKAGE_DESCRIPTION
    "embstore serves very large embedding tables from memory-mapped files and answers \
embedding-bag queries (PyTorch's embedding_bag semantics and more) on CPU and GPU.")
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL Runtime Development Tools)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION libs)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# The tools' dependency on libembstore is the runtime package (below), not
# something dpkg-shlibdeps can look up among installed packages.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${PROJECT_BINARY_DIR})
set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME ${EMBSTORE_RUNTIME_PACKAGE})
set(CPACK_DEBIAN_RUNTIME_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_NAME libembstore-dev)
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_DEPENDS "${EMBSTORE_RUNTIME_PACKAGE} (= ${PROJECT_VERSION})")
set(CPACK_DEBIAN_TOOLS_PACKAGE_NAME embstore-tools)
set(CPACK_DEBIAN_TOOLS_PACKAGE_SECTION utils)
set(CPACK_DEBIAN_TOOLS_PACKAGE_DEPENDS "${EMBSTORE_RUNTIME_PACKAGE} (= ${PROJECT_VERSION})")
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION "embstore shared library")
set(CPACK_COMPONENT_DEVELOPMENT_DESCRIPTION "embstore headers, CMake package and pkg-config file")
set(CPACK_COMPONENT_TOOLS_DESCRIPTION "the embstore command-line tool")
include(CPack)
