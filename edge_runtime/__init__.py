"""edge_runtime."""
