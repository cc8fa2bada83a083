-- Knowledge bases and taught species in PostgreSQL (BIRDSDAO_DATABASE_URL); see birdsdao/kb/README.md.
CREATE EXTENSION IF NOT EXISTS vector;

-- One row per knowledge base. ``version`` grows by one with every commit (documents added or deleted, manifest
-- fields set): a process compares it to the one it read to know that another process changed the KB.
CREATE TABLE kbs (
    kb_id      text PRIMARY KEY,            -- uuid hex, never reused: a KB deleted and created again is another KB
    name       text NOT NULL UNIQUE,
    dim        integer NOT NULL CHECK (dim > 0),
    manifest   jsonb NOT NULL,              -- description, embed_model, created_at, updated_at, extra fields
    version    bigint NOT NULL DEFAULT 1
);

CREATE TABLE documents (
    kb_id      text NOT NULL REFERENCES kbs (kb_id) ON DELETE CASCADE,
    name       text NOT NULL,
    chunks     integer NOT NULL,
    added_at   double precision NOT NULL,
    info       jsonb NOT NULL DEFAULT '{}',  -- bytes, sha256
    PRIMARY KEY (kb_id, name)
);

-- ``embedding`` has no fixed width (KBs of different embedders share the table); each width gets its own partial
-- HNSW index on ``embedding::vector(dim)`` (created with the first KB of that width, birdsdao/kb/pg.py).
-- ``tsv``: the jieba tokens of the indexed text (kb/search.py tokenize), with positions, built by the app.
CREATE TABLE chunks (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kb_id      text NOT NULL,
    doc_name   text NOT NULL,
    pos        integer NOT NULL,
    heading    text NOT NULL DEFAULT '',
    text       text NOT NULL,
    index_text text,
    key        text NOT NULL,               -- embeddings.text_key of the embedded text: vectors are reused by it
    dim        integer NOT NULL,
    embedding  vector NOT NULL,
    tsv        tsvector NOT NULL,
    FOREIGN KEY (kb_id, doc_name) REFERENCES documents (kb_id, name) ON DELETE CASCADE
);
CREATE INDEX chunks_doc ON chunks (kb_id, doc_name, pos);
CREATE INDEX chunks_key ON chunks (kb_id, key);
CREATE INDEX chunks_tsv ON chunks USING gin (tsv);

-- Species users taught: the record (names, key, new) and the prototype features (float16-rounded, row-major).
CREATE TABLE taught_species (
    label      text PRIMARY KEY,
    record     jsonb NOT NULL,
    n          integer NOT NULL,
    dim        integer NOT NULL,
    features   real[] NOT NULL
);
-- One row: bumped by every teach or forget in the same transaction, read by each detect request (one cheap
-- query) so every app process sees other processes' teachings on its next request.
CREATE TABLE taught_version (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    version    bigint NOT NULL
);
INSERT INTO taught_version (id, version) VALUES (true, 0);
