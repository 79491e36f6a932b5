"""Metrics, statistics, tables, figures and the Markdown report."""
