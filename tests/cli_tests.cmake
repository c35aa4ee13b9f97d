# The CLI's end-to-end tests (they run the `embstore` binary) and the
# library-level test of RenormTable, which `embstore renorm` calls.
embstore_test(cli_store_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_store_test.cc LIBS embstore GTest::gmock)
add_dependencies(cli_store_test embstore_cli)
embstore_test(cli_query_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_query_test.cc LIBS embstore_golden_cases embstore_serve embstore nlohmann_json::nlohmann_json GTest::gmock)
add_dependencies(cli_query_test embstore_cli)
embstore_test(fm_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fm_test.cc LIBS embstore nlohmann_json::nlohmann_json GTest::gmock)
add_dependencies(fm_test embstore_cli)
embstore_test(cli_checkpoint_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_checkpoint_test.cc LIBS embstore nlohmann_json::nlohmann_json GTest::gmock)
add_dependencies(cli_checkpoint_test embstore_cli)
embstore_test(cli_hostile_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_hostile_test.cc LIBS embstore GTest::gmock)
add_dependencies(cli_hostile_test embstore_cli)
embstore_test(renorm_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/renorm_test.cc LIBS embstore GTest::gmock)
embstore_test(cli_mapped_input_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_mapped_input_test.cc LIBS embstore)
add_dependencies(cli_mapped_input_test embstore_cli)
# `embstore serve` end to end (a server process on an ephemeral loopback
# port; gRPC clients from serve/).
embstore_test(serve_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/serve_test.cc LIBS embstore_serve embstore)
add_dependencies(serve_test embstore_cli)
# The cluster on loopback: etcd (Debian's etcd-server) and `embstore serve
# --cluster` nodes started by the test on ephemeral ports.
embstore_test(cluster_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cluster_test.cc LIBS embstore_serve embstore)
add_dependencies(cluster_test embstore_cli)
