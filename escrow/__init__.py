"""Secrets: FileVault recovery keys and lock PINs, sealed at rest, never in history."""
