"""The built-in executors: import, populateview, copy, query and delete_data on an embedded DuckDB data plane.

- `dataplane`: the DuckDB file, data sources as tables, their registry and metadata object, statistics.
- `import_data` (with `sources`, `records`, `inference`, `loader`), `populate_view`, `copy_data`,
  `background_query`, `delete_data`: one executor per job kind, each an `async def run_*(ctx, plane, ...)`.
- `runner.ExecutorRunner`: all of them as one worker-SDK Worker (what `jobsd serve` and `jobsd worker` start).
- `datasources_http.add_routes`: the `/v0/datasources` endpoints the gateway mounts when executors run in-process.

Nothing is imported here, so importing one module does not load the others (or the worker SDK).
"""

__all__: list[str] = []
