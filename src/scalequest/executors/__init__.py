"""Executors map a row-wise stage over its pending shards: `local` in this process, `ray` on a Ray cluster."""
