"""Data acquisition and the DuckDB sandbox.

Contract: a seed's sources go in (package datasets, static HTML listings, JSON APIs,
JavaScript-rendered pages), one DuckDB file per environment comes out, with typed tables,
keys and a provenance table. Without internet the factory serves its own offline web on
loopback (`sandboxes.web`), built deterministically from real package datasets
(`sandboxes.world`); the same scrapers work on real URLs.
"""

__all__: list[str] = []
