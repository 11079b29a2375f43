"""Child process of test_ray_executor's lost-node test: a local Ray cluster of three nodes (ray.cluster_utils, in
this process's machine): a head without CPUs (the driver's) and two worker nodes of 1 CPU each, so every actor
runs on a worker node. The node of the actor handed the run's first cell is removed (its raylet and the actor's
worker process killed, as a lost machine). Runs `ptq-bench run RECIPE --executor ray` and exits with its status.
Arguments: RECIPE THREADS (the torch threads of the workers)."""

from __future__ import annotations

import os
import signal
import sys

import ray
import ray._private.state as ray_state
from ray.cluster_utils import Cluster

import ptq_bench.ray_pool as ray_pool
from ptq_bench.cli import main


def run(recipe: str, threads: str) -> int:
    env = {"OMP_NUM_THREADS": threads, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    args = {"num_cpus": 1, "object_store_memory": 100 << 20}
    cluster = Cluster(initialize_head=True, head_node_args={**args, "num_cpus": 0, "include_dashboard": False})
    nodes = {n.node_id: n for n in (cluster.add_node(**args), cluster.add_node(**args))}
    ray.init(address=cluster.address, runtime_env={"env_vars": env})
    real = ray_pool.Dispatch.give
    lost: list[str] = []

    def give(self, actor, what, item):
        state = ray_state.actors(actor._actor_id.hex()) or {}
        node = nodes.get(state.get("Address", {}).get("NodeID"))  # None while the actor is still being placed
        if what == "cell" and not lost and node is not None:
            lost.append(item.label)
            print(f"CHILD: removing the worker node as its actor is handed {item.model} {item.label}", flush=True)
            cluster.remove_node(node, allow_graceful=False)
            os.kill(state["Pid"], signal.SIGKILL)  # the machine's processes go with it (an orphaned worker
        real(self, actor, what, item)               # answered its calls for a while: a tiny cell could end)

    ray_pool.Dispatch.give = give
    try:
        return main(["run", recipe, "--executor", "ray"])
    finally:
        print(f"CHILD: lost {lost}", flush=True)
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(run(*sys.argv[1:]))
