"""The Processing provider, its algorithms and the output post-processor."""
