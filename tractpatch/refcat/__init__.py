"""Reference catalogs: ingest, sharding, loading, fetching."""
