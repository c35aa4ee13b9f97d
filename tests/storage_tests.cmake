embstore_test(codec_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/codec_test.cc LIBS embstore)
embstore_test(table_file_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/table_file_test.cc LIBS embstore)
embstore_test(npy_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/npy_test.cc LIBS embstore)
embstore_test(store_test
              SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/store_test.cc
                      ${CMAKE_CURRENT_SOURCE_DIR}/store_catalog_test.cc
              LIBS embstore RocksDB::rocksdb-shared)
# A process that holds a Store open, driven by the multi-process tests.
add_executable(embstore_test_reader ${CMAKE_CURRENT_SOURCE_DIR}/store_reader_main.cc)
target_include_directories(embstore_test_reader PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(embstore_test_reader PRIVATE embstore Threads::Threads)
embstore_test(multiprocess_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/multiprocess_test.cc LIBS embstore)
target_compile_definitions(multiprocess_test PRIVATE
  EMBSTORE_TEST_READER="$<TARGET_FILE:embstore_test_reader>")
add_dependencies(multiprocess_test embstore_cli embstore_test_reader)
