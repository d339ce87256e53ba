"""Example agents and workflows."""
