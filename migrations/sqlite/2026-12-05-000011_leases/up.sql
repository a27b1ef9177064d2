-- See migrations/mysql/2026-12-05-000011_leases/up.sql.
CREATE TABLE leases (
    name VARCHAR(160) NOT NULL PRIMARY KEY,
    holder VARCHAR(255) NOT NULL,
    expires_at DATETIME(6) NOT NULL
);
