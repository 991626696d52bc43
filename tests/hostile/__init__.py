"""Hostile checkpoints for security tests: live pickle payloads and files that carry them."""
