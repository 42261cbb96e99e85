"""The self-test: run (orchestration), checks (CPU checks), env (environment, sample data), gpu (device-only checks)."""
