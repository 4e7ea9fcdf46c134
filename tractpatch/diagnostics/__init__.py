"""Diagnostic plots and data files of the fits, and the HTML report."""
