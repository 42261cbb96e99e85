"""Samples at rest: the shard writer and reader, the foreign-tar indexer, the remote shard cache, image headers,
long-tailed subsets and score files. Imports only fastcas.core."""
