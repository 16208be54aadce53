"""Widgets: the options page."""
