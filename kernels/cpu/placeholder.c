/* placeholder until the kernels lands */
int drover_kernels_placeholder;
