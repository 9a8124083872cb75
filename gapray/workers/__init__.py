"""Ray roles: generation and reward workers and pools, learner ranks, weight sync."""
