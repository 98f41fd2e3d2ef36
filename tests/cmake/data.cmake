# Data and sharding: IDX / synthetic datasets (agent/dataset) and the epoch order (agent/shard).
drover_unit_test(test_dataset SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_dataset.c
                 LIBS drover_agent ZLIB::ZLIB LABELS unit)
drover_unit_test(test_shard SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_shard.c
                 LIBS drover_agent LABELS unit)
