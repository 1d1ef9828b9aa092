-- Facts every host on this database must agree on, written by the first host
-- that starts: `master_key_check` (a MAC of a fixed text under the master key,
-- so a host started with another key refuses to run instead of failing to
-- open the wallets).
CREATE TABLE host_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
