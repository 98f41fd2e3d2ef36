# worker/report: the records of metrics.jsonl, byte for byte as users and tests parse them.
drover_unit_test(test_report SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_report.c
                 LIBS drover_worker LABELS unit)
