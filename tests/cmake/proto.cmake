drover_unit_test(test_proto SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_proto.c LIBS drover_common)
drover_unit_test(test_protocol_doc SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_protocol_doc.c
                 LIBS drover_common)
target_compile_definitions(test_protocol_doc PRIVATE DROVER_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
drover_unit_test(test_sock SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_sock.c LIBS drover_common)
