-- 0002: orders
CREATE TABLE orders (
    id          BIGINT PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts (id),
    total_cents BIGINT NOT NULL
);
