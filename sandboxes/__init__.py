"""Data acquisition and the DuckDB sandbox.

Contract: a seed's sources go in (files and inline rows, `sandboxes.tables`; package
datasets; static HTML listings, JSON APIs, JavaScript-rendered pages, `sandboxes.sources`),
one DuckDB file per environment comes out (`sandboxes.duck`), with typed tables, keys and a
provenance table. Whole tables are loaded once per run into a catalog (`sandboxes.catalog`)
that the partition choice queries and each environment copies its share from. Without internet the factory serves its own offline web on
loopback (`sandboxes.web`), built deterministically from real package datasets
(`sandboxes.world`); the same scrapers work on real URLs.
"""

__all__: list[str] = []
