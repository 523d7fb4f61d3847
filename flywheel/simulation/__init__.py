"""Simulated end users with known intent, and the measurement of the filters against them.

``scenario`` describes a traffic mix (YAML, shipped ones in ``scenarios/``), ``users`` holds
the behaviours, ``runner`` drives a real gateway and writes the ground truth (``truth``),
and ``report`` joins that truth with the store to say how much of each kind was quarantined.
"""
