-- 0001: accounts
CREATE TABLE accounts (
    id         BIGINT PRIMARY KEY,
    owner      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
