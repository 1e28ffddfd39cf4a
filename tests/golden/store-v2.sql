-- The dbfile schema version 2 (sheepdog 0.3.0.dev0 before booted), verbatim: tests/test_report.py
-- opens a file made with it to check the migration to version 3. Never edit it.
CREATE TABLE IF NOT EXISTS store (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS brokers (
    broker_id TEXT PRIMARY KEY,
    location  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    request_id     INTEGER PRIMARY KEY,
    token          TEXT NOT NULL UNIQUE,
    origin         TEXT NOT NULL,
    broker_id      TEXT NOT NULL REFERENCES brokers(broker_id),
    broker_request INTEGER NOT NULL,
    function       TEXT NOT NULL,
    n_tasks        INTEGER NOT NULL,
    func           BLOB NOT NULL,
    scheduler      TEXT NOT NULL,
    job_ids        TEXT NOT NULL DEFAULT '',
    created        REAL NOT NULL,
    status         TEXT NOT NULL DEFAULT 'submitting',
    settings       TEXT NOT NULL DEFAULT '{}',
    submitter      TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS tasks (
    request_id INTEGER NOT NULL,
    idx        INTEGER NOT NULL,
    args       BLOB NOT NULL,
    first      INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (request_id, idx)
);
CREATE TABLE IF NOT EXISTS results (
    request_id INTEGER NOT NULL,
    idx        INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('ok', 'error', 'lost')),
    cause      TEXT,
    value      BLOB,
    error      TEXT,
    mac        TEXT,
    host       TEXT,
    pid        INTEGER,
    job        TEXT,
    started    REAL,
    finished   REAL,
    stdout     TEXT,
    stderr     TEXT,
    broker_id  TEXT,
    stream_key INTEGER,
    PRIMARY KEY (request_id, idx)
);
CREATE TABLE IF NOT EXISTS attempts (
    request_id INTEGER NOT NULL,
    idx        INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    status     TEXT NOT NULL,
    cause      TEXT,
    error      TEXT,
    host       TEXT,
    pid        INTEGER,
    job        TEXT,
    started    REAL,
    finished   REAL,
    stdout     TEXT,
    stderr     TEXT,
    PRIMARY KEY (request_id, idx, attempt)
);
CREATE TABLE IF NOT EXISTS incidents (
    request_id INTEGER NOT NULL,
    broker_id  TEXT NOT NULL,
    stream_key INTEGER NOT NULL,
    idx        INTEGER,
    error      TEXT NOT NULL,
    host       TEXT,
    PRIMARY KEY (request_id, broker_id, stream_key)
);
