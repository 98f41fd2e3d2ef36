# coordinator/: the scheduler's and recovery's plans, the straggler decision and the
# coordinator's own absence (coord_away_ms), pure functions driven in-process from
# snapshots (no processes, sockets or sleeps).
drover_unit_test(test_sched SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_sched.c
                 LIBS drover_coordinator LABELS unit)
drover_unit_test(test_recovery SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_recovery.c
                 LIBS drover_coordinator LABELS unit)
drover_unit_test(test_progress SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_progress.c
                 LIBS drover_coordinator LABELS unit)
drover_unit_test(test_coord SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_coord.c
                 LIBS drover_coordinator LABELS unit)
# Keys, the allow-list and join files (common/keys.c), and the ZAP decisions on them
# (coordinator/auth.c), on files in a temporary directory.
drover_unit_test(test_keys SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_keys.c
                 LIBS drover_coordinator drover_common LABELS unit)
# The targets file (coordinator/targets.c): a full file, schema errors with file, line and
# key, and the checks the schema cannot make.
drover_unit_test(test_targets SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_targets.c
                 LIBS drover_coordinator LABELS unit)
target_compile_definitions(test_targets PRIVATE DROVER_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
# The managed targets' autoscaler (coordinator/autoscale.c), a pure function.
drover_unit_test(test_autoscale SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_autoscale.c
                 LIBS drover_coordinator LABELS unit)
