"""`drover status` and `drover cancel` with several ids and filters, against a real
coordinator: each id is answered or reported on its own, filters keep what they name, and
the exit status says whether every id went through."""
import json

from harness import cluster, main

SPEC = """
name: %s
target: attached
nodes: 1
model: {type: mlp, hidden: [16]}
data:
  format: synthetic
  synthetic: {train_samples: 2000, test_samples: 200, features: 8, classes: 3, seed: 3}
train: {epochs: 1, global_batch: 50, optimizer: {type: sgd, lr: 0.05}}
run_dir: %s
"""


def status_json(c, *args):
    r = c.drover_cli("status", "--json", *args, timeout=60)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else None), r.stderr


def test_several_ids_and_filters(drover):
    with cluster(drover) as c:
        c.start_coordinator()  # no agents: every job stays queued
        ids = [c.request("submit", {"spec": SPEC % (name, c.runs)})[2]["job"]
               for name in ("alpha", "beta", "alpha")]
        rc, jobs, _ = status_json(c, str(ids[2]), str(ids[0]))
        assert rc == 0 and [j["job"] for j in jobs] == [ids[2], ids[0]], jobs
        rc, jobs, _ = status_json(c, "--name", "alpha")
        assert rc == 0 and sorted(j["job"] for j in jobs) == sorted([ids[0], ids[2]]), jobs
        # cancel two good ids, one that is not a job and one that is not an id
        r = c.drover_cli("cancel", str(ids[0]), str(ids[1]), "999", "x", timeout=60)
        assert r.returncode == 1, r
        assert "job %d cancelled" % ids[0] in r.stdout and "job %d cancelled" % ids[1] in r.stdout, r
        assert "job 999: no such job" in r.stderr and "'x' is not a job id" in r.stderr, r
        rc, jobs, _ = status_json(c, "--state", "cancelled")
        assert rc == 0 and sorted(j["job"] for j in jobs) == sorted(ids[:2]), jobs
        rc, jobs, _ = status_json(c, "--state", "queued", "--name", "alpha")
        assert [j["job"] for j in jobs] == [ids[2]], jobs
        # an unknown id among known ones: the known are shown, the exit status is 1
        r = c.drover_cli("status", str(ids[2]), "998", timeout=60)
        assert r.returncode == 1 and "alpha" in r.stdout and "998" in r.stderr, r
        assert c.drover_cli("cancel", str(ids[2]), timeout=60).returncode == 0


if __name__ == "__main__":
    main([test_several_ids_and_filters])
