"""Exports of task bundles for RL trainers (issue 4)."""
