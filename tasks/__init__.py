"""Prefect tasks: one module per rotation step, each thin, idempotent and safe to retry."""
