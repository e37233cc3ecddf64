"""state.db's schema as a list of forward migrations.

`PRAGMA user_version` holds how many migrations a database has had. The engine applies
the missing ones at start; a database whose version is above len(MIGRATIONS) was written
by a newer threadlab and is refused without being touched.
"""

MIGRATIONS: list[str] = [
    # 1: the tables of DESIGN.md
    """
    CREATE TABLE engine_lock (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL
    );
    CREATE TABLE session (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        task_id INTEGER REFERENCES tasks(id),
        config TEXT NOT NULL,          -- JSON SessionConfig
        elapsed_s REAL NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    );
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        profile TEXT NOT NULL,
        metric_name TEXT NOT NULL,
        direction TEXT NOT NULL,
        unit TEXT NOT NULL DEFAULT '',
        repo_path TEXT NOT NULL,
        root_node_id INTEGER,
        created_at REAL NOT NULL,
        UNIQUE (path, profile)
    );
    CREATE TABLE threads (
        id INTEGER PRIMARY KEY,
        task_id INTEGER NOT NULL REFERENCES tasks(id),
        name TEXT NOT NULL,
        branch TEXT NOT NULL,
        head_node_id INTEGER REFERENCES nodes(id),
        proposer TEXT NOT NULL,
        status TEXT NOT NULL,
        pinned INTEGER NOT NULL DEFAULT 0,
        stale_attempts INTEGER NOT NULL DEFAULT 0,  -- decided attempts since the head last improved
        note TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE nodes (
        id INTEGER PRIMARY KEY,
        task_id INTEGER NOT NULL REFERENCES tasks(id),
        thread_id INTEGER REFERENCES threads(id),
        parent_id INTEGER REFERENCES nodes(id),
        parent2_id INTEGER REFERENCES nodes(id),   -- the other side of a merge
        commit_sha TEXT,                           -- NULL when the edits did not apply
        title TEXT NOT NULL,
        hypothesis TEXT NOT NULL DEFAULT '',
        origin TEXT NOT NULL DEFAULT '{}',         -- JSON: proposer, idea id, knob values
        status TEXT NOT NULL,
        metric REAL,                               -- mean over its finished runs
        metric_std REAL,
        n_runs INTEGER NOT NULL DEFAULT 0,
        p_value REAL,
        error TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX nodes_by_thread ON nodes (thread_id, id);
    CREATE INDEX nodes_by_parent ON nodes (parent_id);
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        node_id INTEGER NOT NULL REFERENCES nodes(id),
        seed INTEGER NOT NULL,
        purpose TEXT NOT NULL,
        status TEXT NOT NULL,
        slot TEXT,
        metric REAL,
        exit_code INTEGER,
        error TEXT NOT NULL DEFAULT '',
        run_dir TEXT,
        attempt INTEGER NOT NULL DEFAULT 1,
        extra TEXT NOT NULL DEFAULT '{}',
        queued_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL
    );
    CREATE INDEX runs_by_node ON runs (node_id);
    CREATE INDEX runs_by_status ON runs (status);
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step INTEGER NOT NULL,
        name TEXT NOT NULL,
        value REAL NOT NULL,
        t REAL NOT NULL
    );
    CREATE INDEX samples_by_run ON samples (run_id, name, step);
    CREATE TABLE verdicts (
        id INTEGER PRIMARY KEY,
        node_id INTEGER NOT NULL REFERENCES nodes(id),
        accepted INTEGER NOT NULL,
        summary TEXT NOT NULL,
        details TEXT NOT NULL DEFAULT '{}',        -- JSON: metrics, p-value, reasons
        created_at REAL NOT NULL
    );
    CREATE INDEX verdicts_by_node ON verdicts (node_id);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        node_id INTEGER REFERENCES nodes(id),
        run_id INTEGER REFERENCES runs(id),
        guard TEXT NOT NULL,
        message TEXT NOT NULL,
        evidence TEXT NOT NULL DEFAULT '{}',
        acknowledged INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE lessons (
        id INTEGER PRIMARY KEY,
        task_id INTEGER NOT NULL REFERENCES tasks(id),
        node_id INTEGER REFERENCES nodes(id),
        idea TEXT NOT NULL,
        positive INTEGER NOT NULL,
        effect REAL,                               -- improvement in metric units, > 0 is better
        confidence REAL,
        evidence TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );
    CREATE TABLE commands (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        args TEXT NOT NULL DEFAULT '{}',
        source TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'pending',    -- pending | done | failed
        result TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        done_at REAL
    );
    CREATE INDEX commands_pending ON commands (status, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        level TEXT NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
