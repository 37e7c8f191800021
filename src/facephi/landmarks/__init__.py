"""landmarks step of the facephi pipeline."""
