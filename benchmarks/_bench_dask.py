"""One timed cold-start ``map`` on dask-jobqueue's SGECluster, for bench_gridengine.py.

Runs as the testbed's submit user (dask-jobqueue runs ``qsub`` on the machine it
runs on, and the cluster refuses root), under the world-readable venv that
bench_gridengine.py makes from the node's /usr/bin/python3 with dask-jobqueue;
the workers run under that same venv's python. The scheduler runs in this
process; scheduler, nannies and workers listen on 127.0.0.1 only
(``interface='lo'``, dashboards on 127.0.0.1).

Usage: python _bench_dask.py N WORKERS OUT_JSON LOG_DIR

Timed (``elapsed``): from ``SGECluster(...)`` to the last result gathered:
scheduler start, ``scale(WORKERS)`` (one qsub per worker: dask-jobqueue
submits single jobs, not an array), ``client.map(add, ..., pure=False)`` issued
at once (tasks start as workers join) and ``client.gather``. Also reported:
``first_worker`` (seconds until the first worker joined) and ``all_workers``,
and the job ids (for qacct). ``cluster.close()`` is not timed.
"""

from __future__ import annotations

import json
import sys
import time


def add(a: int, b: int) -> int:
    return a + b


def main() -> None:
    n, workers, out, log_dir = sys.argv[1:5]
    n_tasks, n_workers = int(n), int(workers)
    from dask.distributed import Client
    from dask_jobqueue import SGECluster

    started = time.monotonic()
    cluster = SGECluster(
        cores=1, processes=1, memory="1GiB", python=sys.executable, interface="lo",
        walltime=None, log_directory=log_dir,
        scheduler_options={"dashboard_address": "127.0.0.1:0"},
        worker_extra_args=["--dashboard-address", "127.0.0.1:0"],
    )
    joined: dict[str, float] = {}
    try:
        cluster.scale(n_workers)
        client = Client(cluster)
        futures = client.map(add, range(n_tasks), [1] * n_tasks, pure=False)
        while len(joined) < n_workers and not all(f.done() for f in futures):
            count = len(client.scheduler_info(n_workers=-1)["workers"])
            now = time.monotonic() - started
            if count and "first" not in joined:
                joined["first"] = now
            if count >= n_workers:
                joined["all"] = now
                break
            time.sleep(0.05)
        results = client.gather(futures)
        elapsed = time.monotonic() - started
        job_ids = sorted({job.job_id for job in cluster.workers.values() if job.job_id})
        ok = results == [i + 1 for i in range(n_tasks)]
        client.close()
    finally:
        cluster.close()
    with open(out, "w") as f:
        json.dump({"elapsed": elapsed, "ok": ok, "first_worker": joined.get("first"),
                   "all_workers": joined.get("all"), "job_ids": job_ids}, f)


if __name__ == "__main__":
    main()
