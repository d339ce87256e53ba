"""Baton's services: each its own process and its own FastStream app."""
