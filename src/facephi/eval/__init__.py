"""eval step of the facephi pipeline."""
