"""Experiment drivers; each writes one folder under reports/."""
