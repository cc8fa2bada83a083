-- The conversation's photos (vision/photos.py PgPhotoStore) when DATABASE_URL is set: every app server answers
-- a photo_id another one issued. The id carries its creation second; `created` repeats it for eviction order.
CREATE TABLE photos (
    photo_id text PRIMARY KEY,
    created bigint NOT NULL,
    bytes integer NOT NULL,
    jpeg bytea NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX photos_created ON photos (created);
-- The newest creation second of a photo pushed out early (count or byte limit): ids up to it answer 410.
CREATE TABLE photo_watermark (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    evicted_up_to bigint NOT NULL
);
INSERT INTO photo_watermark (only_row, evicted_up_to) VALUES (true, 0);
