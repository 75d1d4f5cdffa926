"""drsan_kit: the repository root, installed as one namespace (see README, "Packaging")."""
