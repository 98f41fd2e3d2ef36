# Data and sharding: IDX / synthetic datasets (train/dataset) and the epoch order (train/shard).
drover_unit_test(test_dataset SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_dataset.c
                 LIBS drover_train ZLIB::ZLIB LABELS unit)
drover_unit_test(test_shard SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_shard.c
                 LIBS drover_train LABELS unit)
