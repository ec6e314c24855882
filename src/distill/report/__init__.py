"""Plots and tables from run folders."""
