"""Command-line entry points, one per pipeline step (called by the shims in bin/)."""
