# Integration tests: real coordinator, agent and worker processes on loopback, driven by
# Debian's python3 with python3-zmq and python3-msgpack (scripts/install-deps.sh).
function(drover_it name script labels timeout)
  add_test(NAME ${name}
           COMMAND ${DROVER_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/integration/${script} $<TARGET_FILE:drover>)
  set_tests_properties(${name} PROPERTIES LABELS "${labels}" TIMEOUT ${timeout}
                       ENVIRONMENT "PYTHONDONTWRITEBYTECODE=1")
endfunction()
drover_it(it_protocol test_protocol.py "integration" 300)
drover_it(it_failures test_failures.py "integration" 400)
drover_it(it_scheduler test_scheduler.py "integration" 300)
drover_it(it_queue test_queue.py "integration" 400)
drover_it(it_local test_local.py "integration" 400)
drover_it(it_local_kill test_local_kill.py "integration" 300)
drover_it(it_resume test_resume.py "integration" 600)
drover_it(it_recovery test_recovery.py "integration" 600)
drover_it(it_outages test_outages.py "integration" 600)
drover_it(it_security test_security.py "integration" 600)
drover_it(it_ring_auth test_ring_auth.py "integration" 400)
drover_it(it_paths test_paths.py "integration" 600)
drover_it(it_cli test_cli.py "integration" 300)
# Several workers per node: world 4 on 2 agents, a killed worker, fake GPUs dealt out.
drover_it(it_workers test_workers.py "integration" 600)
# Command jobs: the user's program per rank (environment, reports, restarts, hangs, preemption).
drover_it(it_command test_command.py "integration" 400)
# Managed targets through the command launcher: scale up, down, failures, restart.
drover_it(it_targets test_targets.py "integration" 300)
# Hostile peers (bombs, floods, idle connections, bad UTF-8) while a victim job runs.
drover_it(it_hostile test_hostile.py "integration" 400)
# The sshd fixture (sshfix.py) the ssh launcher's tests use, checked for real; 77 = no sshd.
drover_it(it_sshfix test_sshfix.py "integration" 120)
set_tests_properties(it_sshfix PROPERTIES SKIP_RETURN_CODE 77)
# The Slurm fixture (slurmfix.py) on real slurmctld/slurmd/munged; 77 (skipped) when not root.
drover_it(it_slurm test_slurmfix.py "integration;slow" 300)
set_tests_properties(it_slurm PROPERTIES SKIP_RETURN_CODE 77)
drover_it(it_train test_train.py "integration;slow" 900)
# Heavy on CPU: run it alone so the timing of the failure tests is not disturbed.
set_tests_properties(it_train PROPERTIES RUN_SERIAL TRUE)
# A managed target through the ssh launcher against that sshd (exit 77 where it cannot run).
drover_it(it_ssh_target test_ssh_target.py "integration" 180)
set_tests_properties(it_ssh_target PROPERTIES SKIP_RETURN_CODE 77)
# A managed target through the Slurm launcher on that Slurm cluster: cold start, scale down,
# scancel as a preemption, a refused sbatch (exit 77 where the fixture cannot run).
drover_it(it_slurm_target test_slurm_target.py "integration;slow" 300)
set_tests_properties(it_slurm_target PROPERTIES SKIP_RETURN_CODE 77)
# The Python module of command jobs (python/drover) against a ROUTER the test plays the
# worker with, and examples/torch-ddp under Debian's torchrun (77 where torch is missing).
drover_it(it_pymodule test_pymodule.py "integration" 300)
set_tests_properties(it_pymodule PROPERTIES SKIP_RETURN_CODE 77)
# examples/torch-ddp (Debian's PyTorch, gloo) as a command job against torchrun: the same
# accuracy, drover logs, a killed rank resumed from the program's checkpoint (77: no torch).
drover_it(it_torch_ddp test_torch_ddp.py "integration;slow" 400)
set_tests_properties(it_torch_ddp PROPERTIES SKIP_RETURN_CODE 77)
