"""The lake: tables of content-keyed rows (store.Lake), their schemas, DuckDB views over them
(catalog) and the lineage behind any id."""
