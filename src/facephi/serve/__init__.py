"""serve step of the facephi pipeline."""
