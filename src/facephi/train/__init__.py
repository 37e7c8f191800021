"""train step of the facephi pipeline."""
