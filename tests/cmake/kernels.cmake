# Kernels and trainer: the CPU backend against finite differences and naive references,
# the trainer's schedule, init, learning and safetensors output.
drover_unit_test(test_kernels SOURCES test_kernels.c LIBS drover_train drover_kernels LABELS unit)
drover_unit_test(test_trainer SOURCES test_trainer.c LIBS drover_train drover_kernels LABELS unit)
