# The tree's rules a compiler does not check (scripts/check-layout.py): only common/proto.c
# includes msgpack.h and only common/sock.c zmq.h; arrows between folders point down; no
# function outside tests/ over 120 lines; coordinator/coord.c and worker/worker.c under 600.
add_test(NAME test_layout COMMAND ${DROVER_PYTHON} ${PROJECT_SOURCE_DIR}/scripts/check-layout.py
                                  ${PROJECT_SOURCE_DIR})
set_tests_properties(test_layout PROPERTIES LABELS "unit" TIMEOUT 60)
