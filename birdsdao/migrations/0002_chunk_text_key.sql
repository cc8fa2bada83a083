-- embeddings.text_key of a chunk's shown text (``key`` is that of the embedded text): finds boilerplate that
-- another document of the KB already carries, as the file store's text_owner does.
ALTER TABLE chunks ADD COLUMN text_key text NOT NULL DEFAULT '';
CREATE INDEX chunks_text_key ON chunks (kb_id, text_key);
-- A vector of another width than its row says would be skipped by its width's index: refused instead.
ALTER TABLE chunks ADD CONSTRAINT chunks_dim_matches CHECK (vector_dims(embedding) = dim);
