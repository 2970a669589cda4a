"""Data access: schema cache, query compiler, transaction runner, pool."""
