"""One training round from the stored feedback (snapshot, reward model, DPO or KTO, gates, registration),
and the scorer that keeps the filters' reward-model scores current. The only package that imports torch."""
