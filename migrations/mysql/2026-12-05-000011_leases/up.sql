-- Work one process at a time does across every controller (a replication
-- pass per second store): `holder` has it until `expires_at`, renews it as
-- it goes, and a holder that died loses it when it runs out.
CREATE TABLE leases (
    name VARCHAR(160) NOT NULL PRIMARY KEY,
    holder VARCHAR(255) NOT NULL,
    expires_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
