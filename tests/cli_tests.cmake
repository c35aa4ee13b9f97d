embstore_test(cli_store_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_store_test.cc LIBS embstore_storage)
add_dependencies(cli_store_test embstore)
embstore_test(cli_query_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_query_test.cc LIBS embstore_storage nlohmann_json::nlohmann_json)
add_dependencies(cli_query_test embstore)
