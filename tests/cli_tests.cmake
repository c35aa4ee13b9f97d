# The CLI's end-to-end tests (they run the `embstore` binary) and the
# library-level test of RenormTable, which `embstore renorm` calls.
embstore_test(cli_store_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_store_test.cc LIBS embstore_storage GTest::gmock)
add_dependencies(cli_store_test embstore)
embstore_test(cli_query_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_query_test.cc LIBS embstore_golden_cases embstore_storage embstore_engine nlohmann_json::nlohmann_json GTest::gmock)
add_dependencies(cli_query_test embstore)
embstore_test(fm_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fm_test.cc LIBS embstore_storage embstore_engine nlohmann_json::nlohmann_json GTest::gmock)
add_dependencies(fm_test embstore)
embstore_test(cli_checkpoint_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_checkpoint_test.cc LIBS embstore_storage nlohmann_json::nlohmann_json GTest::gmock)
add_dependencies(cli_checkpoint_test embstore)
embstore_test(cli_hostile_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_hostile_test.cc LIBS embstore_storage GTest::gmock)
add_dependencies(cli_hostile_test embstore)
embstore_test(renorm_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/renorm_test.cc LIBS embstore_engine embstore_storage GTest::gmock)
