# Engine test suites (included by tests/CMakeLists.txt).
embstore_test(engine_kernels_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_kernels_test.cc
  LIBS embstore TBB::tbb)
embstore_test(engine_semantics_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_semantics_test.cc
  LIBS embstore TBB::tbb nlohmann_json::nlohmann_json)
embstore_test(engine_norm_semantics_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_norm_semantics_test.cc
  LIBS embstore TBB::tbb nlohmann_json::nlohmann_json)
embstore_test(engine_errors_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_errors_test.cc
  LIBS embstore TBB::tbb)
embstore_test(engine_concurrency_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_concurrency_test.cc
  LIBS embstore TBB::tbb)
embstore_test(engine_golden_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_golden_test.cc
  LIBS embstore_golden_cases embstore TBB::tbb nlohmann_json::nlohmann_json)
# The kernels' row prefetches survive compilation (x86 builds with objdump).
if(CMAKE_OBJDUMP AND CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  add_test(NAME engine_prefetch_emitted
           COMMAND ${CMAKE_COMMAND} -DOBJDUMP=${CMAKE_OBJDUMP} "-DLIB=$<TARGET_OBJECTS:embstore_engine>"
                   -P ${CMAKE_CURRENT_SOURCE_DIR}/check_prefetch_emitted.cmake)
endif()
# The Engine interface over every engine the machine has (CPU always).
embstore_test(engine_interface_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_interface_test.cc
  LIBS embstore TBB::tbb)
# The page prefetcher of cold tables; its cgroup case runs a child process.
add_executable(embstore_test_cold_reader ${CMAKE_CURRENT_SOURCE_DIR}/cold_reader_main.cc)
target_include_directories(embstore_test_cold_reader PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(embstore_test_cold_reader PRIVATE embstore Threads::Threads)
embstore_test(page_prefetch_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/page_prefetch_test.cc
  LIBS embstore)
target_compile_definitions(page_prefetch_test PRIVATE
  EMBSTORE_TEST_COLD_READER="$<TARGET_FILE:embstore_test_cold_reader>")
add_dependencies(page_prefetch_test embstore_cli embstore_test_cold_reader)
# Pooling over row shards: split and merge (the cluster's arithmetic).
embstore_test(engine_partial_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_partial_test.cc
  LIBS embstore TBB::tbb)
