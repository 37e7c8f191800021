"""data step of the facephi pipeline."""
