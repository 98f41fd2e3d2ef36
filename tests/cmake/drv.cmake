# common/drv: the per-thread last error, its message and the location it records.
drover_unit_test(test_drv SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_drv.c LIBS drover_common
                 LABELS unit)
