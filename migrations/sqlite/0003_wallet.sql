-- Custodial wallets and their double-entry ledger.

CREATE TABLE wallets (
    tenant_id   TEXT PRIMARY KEY,
    address     TEXT NOT NULL UNIQUE,
    sealed_seed BLOB NOT NULL,   -- XChaCha20-Poly1305(master key, seed), tenant id as AAD
    nonce       BLOB NOT NULL,
    created_at  TEXT NOT NULL
);

-- Balances by account (an address, or 'mint', which goes negative by what the operator funded).
CREATE TABLE ledger_balances (
    account     TEXT PRIMARY KEY,
    balance     INTEGER NOT NULL,
    CHECK (account = 'mint' OR balance >= 0)
);

CREATE TABLE ledger_transfers (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    from_account    TEXT NOT NULL,
    to_account      TEXT NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount > 0),
    memo            TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      TEXT NOT NULL
);
CREATE UNIQUE INDEX ledger_idempotency ON ledger_transfers (from_account, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX ledger_from ON ledger_transfers (from_account, seq);
CREATE INDEX ledger_to ON ledger_transfers (to_account, seq);

-- Two entries per transfer that sum to zero.
CREATE TABLE ledger_entries (
    transfer_seq INTEGER NOT NULL REFERENCES ledger_transfers (seq),
    account      TEXT NOT NULL,
    amount       INTEGER NOT NULL,
    PRIMARY KEY (transfer_seq, account)
);
