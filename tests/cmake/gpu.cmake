# The CUDA backend against the CPU reference (label gpu; exits 77, skipped, where no GPU
# answers). Built in every configuration, so it keeps compiling without CUDA too.
drover_unit_test(test_cuda SOURCES test_cuda.c LIBS drover_train drover_kernels LABELS gpu
                 TIMEOUT 300)
# End to end on a GPU: 2 workers sharing it through NCCL against 1, and the GPU example's
# accuracy. Standard-library Python only (a GPU machine may lack python3-zmq).
add_test(NAME it_gpu COMMAND ${DROVER_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_gpu.py
                             $<TARGET_FILE:drover>)
set_tests_properties(it_gpu PROPERTIES LABELS "gpu" TIMEOUT 300 SKIP_RETURN_CODE 77
                     RUN_SERIAL TRUE ENVIRONMENT "PYTHONDONTWRITEBYTECODE=1")
