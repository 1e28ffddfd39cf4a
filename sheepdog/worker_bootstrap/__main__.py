"""Entry point of an array task: ``python -m sheepdog.worker_bootstrap JOB_FILE``."""

from sheepdog.worker_bootstrap.run import main

raise SystemExit(main())
