"""One timed ``map`` of the ORIGINAL Sheepdog 0.2.3 (PyPI), for bench_gridengine.py.

Runs in the venv that bench_gridengine.py makes for it (Sheepdog 0.2.3 with
flask, tornado and paramiko), never in the project's venv: both packages are
imported as ``sheepdog``. Its source is used as published; this driver only
wraps two things from the outside, at run time:

* ``sheepdog.server.HTTPServer``: a subclass whose ``listen`` binds 127.0.0.1
  (0.2.3 listens on every interface; servers here bind to loopback only).
* after ``map`` returns (the clock stopped), the driver stops 0.2.3's HTTP
  server itself; see ``main`` for why.
* ``sheepdog.deployment.Deployer.submit``: the wrapper keeps what qsub printed
  (0.2.3 throws it away), so the job id can be written to ``--jobfile`` at once
  (for qdel on a timeout, and for qacct).

Usage: python _bench_sheepdog023.py N DBFILE PORT REMOTE_DIR SSH_KEY OUT_JSON JOBFILE
with HOME pointing at a home whose ~/.ssh/config names host ``testbed``
(0.2.3 reads ~/.ssh/config and ~/.ssh/known_hosts, as its docs say).
"""

from __future__ import annotations

import json
import re
import sys
import time

import sheepdog.deployment
import sheepdog.server

import sheepdog


def add(a, b):
    return a + b


class LoopbackHTTPServer(sheepdog.server.HTTPServer):
    def listen(self, port, address="127.0.0.1", **kwargs):
        return super().listen(port, address="127.0.0.1", **kwargs)


def main() -> None:
    if sheepdog.__version__ != "0.2.3":
        raise SystemExit(f"imported sheepdog {sheepdog.__version__} from {sheepdog.__file__}")
    n, dbfile, port, remote_dir, key, out, jobfile = sys.argv[1:8]
    n_tasks = int(n)
    sheepdog.server.HTTPServer = LoopbackHTTPServer
    submit = sheepdog.deployment.Deployer.submit

    def submit_and_keep(self, request_id, directory):
        said = submit(self, request_id, directory)
        text = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
        match = re.search(r"Your job(?:-array)? (\d+)", text)
        with open(jobfile, "w") as f:
            f.write(match.group(1) if match else "")
        if not match:
            raise RuntimeError(f"qsub printed no job id: {text!r}")
        return said

    sheepdog.deployment.Deployer.submit = submit_and_keep
    config = {
        "host": "testbed",  # HostName, Port and User from ~/.ssh/config
        "ssh_keyfile": key,
        "ssh_dir": remote_dir,
        "dbfile": dbfile,
        "port": int(port),
        "localhost": "127.0.0.1",
        "shell": "/usr/bin/python3",
        # its documented defaults, with the directory made absolute
        "ge_opts": [f"-wd {remote_dir}/", f"-o {remote_dir}/", f"-e {remote_dir}/"],
    }
    args = [(i, 1) for i in range(n_tasks)]
    started = time.monotonic()
    results = sheepdog.map(add, args, config, verbose=False)
    elapsed = time.monotonic() - started
    # map has returned, but on Python 3 the interpreter would then hang at exit:
    # multiprocessing's atexit handler (registered when the server process was
    # started, so it runs first) joins the server process, which 0.2.3's own
    # handler (registered at import, so it runs later) was to terminate. Stop it
    # here, after the clock, as that handler would.
    for server in set(sheepdog.server._servers.values()):
        server.stop()
    ok = results == [i + 1 for i in range(n_tasks)]
    with open(out, "w") as f:
        json.dump({"elapsed": elapsed, "ok": ok,
                   "errors": sheepdog.get_errors(1, dbfile)[:3] if not ok else []}, f,
                  default=str)


if __name__ == "__main__":
    main()
