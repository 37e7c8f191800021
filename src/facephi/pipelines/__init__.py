"""Pipeline drivers that chain the steps: `facephi reproduce` (Table 1) and `facephi demo` (the main job)."""
