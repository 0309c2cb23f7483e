"""Temporal activities: everything that touches the network or the database."""
