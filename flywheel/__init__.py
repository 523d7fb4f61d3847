"""What drives and composes the other packages from outside: the ``flywheel`` CLI, the embedded stack,
the traffic simulator and the demo that proves the loop."""
