"""Small shared helpers: atomic file writes, run metadata, seeding, errors."""
