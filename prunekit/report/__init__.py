"""Reporting: tables (mean ± std), plots, the HTML report, latency."""
