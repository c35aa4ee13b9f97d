embstore_test(cli_store_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_store_test.cc LIBS embstore_storage)
add_dependencies(cli_store_test embstore)
