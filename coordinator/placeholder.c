/* placeholder until the coordinator lands */
int drover_coordinator_placeholder;
