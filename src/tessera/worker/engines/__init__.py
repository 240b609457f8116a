"""worker/engines."""
