"""The run's config: pydantic sections, presets and `--set` overrides, migrations."""
