"""Drift statistics (vectorised across features) and the policy that turns them into verdicts."""
