-- The target's schema. Applied by target_service at every start-up, inside a
-- transaction holding an advisory lock, so it is idempotent and safe when
-- several replicas start at once.

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

-- One row per element that failed validation or was a conflict (skipped
-- changes, inactive or stale, are counted, not recorded).
CREATE TABLE IF NOT EXISTS sync_rejections (
    id BIGSERIAL PRIMARY KEY,
    profile_id UUID,                    -- the change's id, when it is a UUID
    outcome VARCHAR(50) NOT NULL,       -- failed_validation | conflict
    reason VARCHAR(50) NOT NULL,        -- reason code, e.g. invalid_email
    message TEXT NOT NULL,              -- what was wrong, for people
    payload TEXT NOT NULL,              -- the element's exact text (\uXXXX-escaped only where the encoding lacks a character)
    changed_at TIMESTAMPTZ,             -- the change's last_updated_at, when it parses
    change_key BYTEA NOT NULL,          -- SHA-256 of the element's exact text, as received
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at TIMESTAMPTZ,            -- set by `target_service redrive`
    resolution VARCHAR(50)              -- 'synced' | 'stale', set by redrive
);
-- A rejection is its element's exact text: the same text arriving again, in
-- any page or epoch, is the same rejection and is not recorded twice. The
-- text decides `profile_id` too, so the key may lead with it: one index is
-- then both the identity and a user's rejections (NULLS NOT DISTINCT, so a
-- text without a UUID id is recorded once as well).
CREATE UNIQUE INDEX IF NOT EXISTS sync_rejections_element
    ON sync_rejections (profile_id, change_key) NULLS NOT DISTINCT;

-- Where syncing stands, one row per source URL.
CREATE TABLE IF NOT EXISTS sync_state (
    source_url TEXT PRIMARY KEY,
    source_epoch TEXT,                  -- X-Source-Epoch the cursor belongs to
    cursor BIGINT NOT NULL DEFAULT 0,   -- every change up to here is stored
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
