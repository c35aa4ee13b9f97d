# Engine test suites (included by tests/CMakeLists.txt).
embstore_test(engine_kernels_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_kernels_test.cc
  LIBS embstore_engine TBB::tbb)
embstore_test(engine_semantics_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_semantics_test.cc
  LIBS embstore_engine TBB::tbb)
embstore_test(engine_errors_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_errors_test.cc
  LIBS embstore_engine TBB::tbb)
embstore_test(engine_concurrency_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_concurrency_test.cc
  LIBS embstore_engine TBB::tbb)
embstore_test(engine_golden_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_golden_test.cc
  LIBS embstore_engine TBB::tbb nlohmann_json::nlohmann_json)
