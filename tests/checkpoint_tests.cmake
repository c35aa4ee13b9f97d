# Checkpoint readers (npz, safetensors, torch.save, pickle VM, zip); fixtures in data/checkpoints.
embstore_test(checkpoint_reader_test
              SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/checkpoint_reader_test.cc
                      ${CMAKE_CURRENT_SOURCE_DIR}/checkpoint_stream_test.cc
              LIBS embstore PkgConfig::LIBZIP)
