SELECT $q$ ingest_idempotency $q$, E'it\'s ingest_idempotency', "ingest_idempotency" -- ingest_idempotency
FROM orders