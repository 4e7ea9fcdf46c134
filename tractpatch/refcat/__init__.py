"""Reference catalogs: ingest, HEALPix shards, loading at an epoch and in a filter, fetching.

- :mod:`.ingest` — ``ingest_catalog(root, files, name, config)`` and the stored schema;
- :mod:`.config` — ``IngestRefCatConfig`` (LSST's column-map names);
- :mod:`.shards` — the on-disk layout ``ROOT/ref_cats/<name>/<pixel>.fits`` + config.yaml;
- :mod:`.loader` — ``load_region``, ``load_polygon``, ``available_refcats``;
- :mod:`.propermotion` — great-circle proper-motion propagation;
- :mod:`.colorterms` — reference bands to instrument filters (hscPipe's HSC terms);
- :mod:`.fetch` — Gaia DR3 / PS1 DR2 / SDSS DR16 through astroquery, tiled and resumable;
- :mod:`.tasks` — the ingestReferenceCatalog.py and fetchReferenceCatalog.py commands.
"""
