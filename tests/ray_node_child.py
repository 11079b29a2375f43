"""Child process of test_ray_executor's lost-node test: a two-node local Ray cluster (ray.cluster_utils: a head
and a worker node, 1 CPU each, in this process's machine); the worker node is removed (its raylet and the
actor's worker process killed, as a lost machine) as a cell is handed to an actor placed there, once. Runs `ptq-bench run RECIPE
--executor ray` and exits with its status. Arguments: RECIPE THREADS (the torch threads of the workers)."""

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
    cluster = Cluster(initialize_head=True, head_node_args={**args, "include_dashboard": False})
    node = cluster.add_node(**args)
    ray.init(address=cluster.address, runtime_env={"env_vars": env})
    real = ray_pool.Dispatch.give
    lost: list[str] = []

    def give(self, actor, what, item):
        state = ray_state.actors(actor._actor_id.hex()) or {}
        if what == "cell" and not lost and state.get("Address", {}).get("NodeID") == node.node_id:
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
