"""GPU smoke tests for the kit's images.

Each module is a script run as ``python -m smoke_tests.<name> [--cpu] [--json PATH]``
(the NCCL one also under ``torchrun``). Every script prints a short table, writes one
JSON result in the schema of :mod:`smoke_tests._result`, exits 0 when it passed or was
skipped (no GPU) and 1 when it failed, and stops itself after ``--timeout`` seconds.

The pure logic (bandwidth arithmetic, topology parsing, result schema, tables, the
tiny model's files) imports neither torch nor CUDA at module level, so the unit tests
run on the CPU-only CI machines.
"""
