/* placeholder until the agent lands */
int drover_agent_placeholder;
