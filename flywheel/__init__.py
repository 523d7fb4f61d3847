"""The ``flywheel`` command: composes the serving, feedback and trainer packages."""
