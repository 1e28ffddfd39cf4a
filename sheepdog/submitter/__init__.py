"""What runs on the submitting machine: config, submitting, schedulers, the
collator and the SQLite store, and the functions users call."""
