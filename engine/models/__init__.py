"""Models: built-in and registered specs, the workspace catalogue, summaries on the meta device."""
