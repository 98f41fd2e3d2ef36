# train/checkpoint: tear-proof checkpoints (round trip, newest wins, prune, a writer killed at
# random points, corrupt files and manifests, shape mismatches).
drover_unit_test(test_checkpoint SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_checkpoint.c
                 LIBS drover_train drover_common ZLIB::ZLIB LABELS unit TIMEOUT 120)
