# worker/report: the records of metrics.jsonl, byte for byte as users and tests parse them, and
# each one shown in docs/user-guide.md.
drover_unit_test(test_report SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_report.c
                 LIBS drover_worker LABELS unit)
target_compile_definitions(test_report PRIVATE DROVER_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
# worker/worker: the assignment an agent writes on the worker's stdin, read and checked.
drover_unit_test(test_assignment SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_assignment.c
                 LIBS drover_worker LABELS unit)
