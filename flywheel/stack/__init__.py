"""The embedded stack: the processes ``flywheel up`` and ``flywheel demo`` start, and how they are kept alive.

Launchers for each external program (broker, engine, MLflow UI), the supervisor that restarts a
child that dies, and the guard that takes a child's own processes down with it. Production runs
the same commands under its own orchestrator (``docker/compose.yaml``) and needs none of this.
"""
