drover_unit_test(test_proto SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_proto.c LIBS drover_common)
