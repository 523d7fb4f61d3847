"""`flywheel demo`: rounds of simulated users, training and promotion on the embedded stack, judged by the
simulator's taste.
"""
