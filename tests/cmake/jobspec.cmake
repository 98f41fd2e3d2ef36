# The job spec (common/jobspec.c): loading, errors, --set, defaults, dump round trip.
drover_unit_test(test_jobspec SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_jobspec.c
                 LIBS drover_common LABELS unit)
# The examples are loaded from the source tree.
target_compile_definitions(test_jobspec PRIVATE DROVER_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
