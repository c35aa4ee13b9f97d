embstore_test(table_file_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/table_file_test.cc LIBS embstore_storage)
embstore_test(npy_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/npy_test.cc LIBS embstore_storage)
embstore_test(store_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/store_test.cc LIBS embstore_storage)
