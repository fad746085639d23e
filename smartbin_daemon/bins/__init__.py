"""Bin operation: fill tracking per compartment and the sorting workflow."""
