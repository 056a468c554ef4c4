"""Widgets: one Python class per view, each paired with ``js/<same name>.js``."""
