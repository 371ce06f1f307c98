"""Model specs, presets, loading and the tiny random-weight presets."""
