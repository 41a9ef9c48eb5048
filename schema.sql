-- The target's schema. Applied by target_service at every start-up, inside a
-- transaction holding an advisory lock, so it is idempotent and safe when
-- several replicas of the same version start at once.

-- The original users table, unchanged.
CREATE TABLE IF NOT EXISTS users (
    id UUID PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    email VARCHAR(255) UNIQUE NOT NULL,
    mobile VARCHAR(20) UNIQUE NOT NULL,
    status VARCHAR(50) NOT NULL,
    last_updated_at TIMESTAMPTZ NOT NULL,
    sync_status VARCHAR(50) NOT NULL DEFAULT 'synced',
    sync_message TEXT
);

-- One row per change that was not synced (every outcome but stale).
CREATE TABLE IF NOT EXISTS sync_rejections (
    id BIGSERIAL PRIMARY KEY,
    profile_id UUID,                    -- the change's id, when it is a UUID
    outcome VARCHAR(50) NOT NULL,       -- failed_validation | skipped | conflict
    reason VARCHAR(50) NOT NULL,        -- reason code, e.g. invalid_email
    message TEXT NOT NULL,              -- what was wrong, for people
    payload TEXT NOT NULL,              -- the raw element as JSON text
    changed_at TIMESTAMPTZ,             -- the change's last_updated_at, when it parses
    payload_copy INTEGER NOT NULL DEFAULT 0, -- identical payloads before it in its page
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at TIMESTAMPTZ,            -- when `target_service redrive` settled it
    resolution VARCHAR(50)              -- synced | stale, set by redrive
);
-- A replayed change is recorded once: the same raw element at the same place
-- among its identical twins of a page is the same change. Its key is a UUID,
-- the MD5 digest of the payload, a colon and payload_copy, rather than the
-- text itself, so the index stays small. The writer computes it for every row
-- it inserts (computing it here, as a generated column, made each insert
-- copy the whole row once more). Tables made before the key existed get it
-- here, computed for their rows; tables that computed it get a plain column.
-- The writer hashes the payload's UTF-8 bytes: on a UTF8 database those are
-- the bytes md5() saw, so earlier keys match. There is no way back: an
-- earlier version inserts no key, which NOT NULL refuses.
ALTER TABLE sync_rejections ADD COLUMN IF NOT EXISTS change_key UUID
    GENERATED ALWAYS AS (md5(payload || ':' || payload_copy::text)::uuid) STORED;
ALTER TABLE sync_rejections ALTER COLUMN change_key DROP EXPRESSION IF EXISTS;
ALTER TABLE sync_rejections ALTER COLUMN change_key SET NOT NULL;
-- One index both keeps a change from being recorded twice and finds a user's
-- rejections (by its leading column): a change's key determines its payload
-- and so its profile id, which makes the pair exactly as unique as the key.
-- NULLS NOT DISTINCT (PostgreSQL 15) keeps changes without a UUID unique too.
-- It replaces two indexes of earlier versions, a unique one on the key and one
-- on profile_id; every insert maintained both. A replica of such a version
-- names the old key in its ON CONFLICT and cannot write once it is gone: stop
-- those replicas before starting this one.
CREATE UNIQUE INDEX IF NOT EXISTS sync_rejections_profile_change_key
    ON sync_rejections (profile_id, change_key) NULLS NOT DISTINCT;
DROP INDEX IF EXISTS sync_rejections_change_key;
DROP INDEX IF EXISTS sync_rejections_profile_id_idx;

-- The ids with a recorded conflict or refused row: the only decisions a
-- valid change can get. A batch that reads optimistically asks it whether
-- any of its ids has one, for a replay of such a change must not sync it
-- now. Only those rows are in it, so it costs inserts next to nothing.
CREATE INDEX IF NOT EXISTS sync_rejections_valid_change_decisions
    ON sync_rejections (profile_id)
    WHERE reason IN ('email_taken', 'mobile_taken', 'db_error');
DROP INDEX IF EXISTS sync_rejections_payload_key;

-- Where syncing stands, one row per source URL.
CREATE TABLE IF NOT EXISTS sync_state (
    source_url TEXT PRIMARY KEY,
    source_epoch TEXT,                  -- X-Source-Epoch the cursor belongs to
    cursor BIGINT NOT NULL DEFAULT 0,   -- every change up to here is stored
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
