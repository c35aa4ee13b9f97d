# CUDA module test suites (included by tests/CMakeLists.txt).
#
# cuda_cache_policy_test, cuda_cache_policy_model_test, cuda_pool_math_test
# and cuda_batch_prep_test are plain C++ and run in every build, GPU or not (CI
# has none): the cache bookkeeping, and the whole batch pipeline with the
# engine's own kernel arguments and the kernels' arithmetic run on the CPU.
# cuda_engine_test, cuda_engine_cache_test and cuda_golden_test drive the
# real GpuEngine; where no GPU is present (or the build has no CUDA) every
# test in them is skipped (GTEST_SKIP), never failed.
embstore_test(cuda_cache_policy_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cuda_cache_policy_test.cc
  LIBS embstore)
embstore_test(cuda_cache_policy_model_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cuda_cache_policy_model_test.cc
  LIBS embstore)
embstore_test(cuda_pool_math_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cuda_pool_math_test.cc
  LIBS embstore TBB::tbb)
embstore_test(cuda_batch_prep_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cuda_batch_prep_test.cc
  LIBS embstore TBB::tbb)
embstore_test(cuda_engine_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cuda_engine_test.cc
  LIBS embstore TBB::tbb)
# The device-output tests allocate device memory themselves, with their own
# CUDA runtime beside libembstore's (as a serving program would).
if(EMBSTORE_HAVE_CUDA)
  target_compile_definitions(cuda_engine_test PRIVATE EMBSTORE_HAVE_CUDA=1)
  target_link_libraries(cuda_engine_test PRIVATE CUDA::cudart_static)
endif()
embstore_test(cuda_engine_cache_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cuda_engine_cache_test.cc
  LIBS embstore TBB::tbb)
embstore_test(cuda_golden_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cuda_golden_test.cc
  LIBS embstore_golden_cases embstore TBB::tbb nlohmann_json::nlohmann_json)
