"""Runs: configuration, the run store, event files, launching and the worker process."""
