"""The typed recipe (schema) and reading it from YAML with overrides."""
