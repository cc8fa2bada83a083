-- Upload jobs of the PostgreSQL queue (birdsdao/kb/pg_jobs.py): what /kb/jobs/<job_id> reports, and the
-- uploaded files a worker reads (bytea: any worker on any machine reaches them through the database, they
-- are written in the same transaction as their job, and deleted when it finishes). The queue itself
-- (procrastinate_* tables) is procrastinate's own schema, installed by pg_jobs.install_schema.
CREATE TABLE IF NOT EXISTS kb_jobs (
    job_id      uuid PRIMARY KEY,
    kb_name     text NOT NULL,
    replace     boolean NOT NULL DEFAULT false,
    state       text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'failed')),
    progress    jsonb NOT NULL DEFAULT '{}'::jsonb,
    result      jsonb,
    attempts    integer NOT NULL DEFAULT 0,
    worker      text,                       -- host:pid of the worker process of the latest run (operators)
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS kb_jobs_state ON kb_jobs (state);

CREATE TABLE IF NOT EXISTS kb_job_files (
    job_id   uuid NOT NULL REFERENCES kb_jobs (job_id) ON DELETE CASCADE,
    position integer NOT NULL,
    filename text NOT NULL,
    data     bytea NOT NULL,
    PRIMARY KEY (job_id, position)
);
