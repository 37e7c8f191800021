"""model step of the facephi pipeline."""
