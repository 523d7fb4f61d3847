"""The model registry's contract: which versions exist, which alias each carries, and how ops move them.

MLflow holds the versions and aliases; the store holds the audit of every move. The gateway reads
the champion from here, the trainer registers candidates here, and the CLI promotes and rolls back
through here; none of them imports another for it.
"""
