# CUDA module test suites (included by tests/CMakeLists.txt).
#
# cuda_cache_policy_test and cuda_pool_math_test are plain C++ and run in
# every build, GPU or not (CI has none): the cache bookkeeping, and the whole
# batch pipeline with the kernels' arithmetic run on the CPU.
# cuda_engine_test drives the real GpuEngine; where no GPU is present (or the
# build has no CUDA) every test in it is skipped (GTEST_SKIP), never failed.
embstore_test(cuda_cache_policy_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cuda_cache_policy_test.cc
  LIBS embstore_cuda)
embstore_test(cuda_pool_math_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cuda_pool_math_test.cc
  LIBS embstore_cuda embstore_engine TBB::tbb)
embstore_test(cuda_engine_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cuda_engine_test.cc
  LIBS embstore_cuda embstore_engine embstore_storage TBB::tbb nlohmann_json::nlohmann_json)
