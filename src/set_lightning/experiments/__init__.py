"""Experiments on top of the Lightning module: sweep specs, runners (local, SLURM), the worker, records, reports.

Imports go one way: the entry point (``set_lightning.entry``) imports this package, which imports the
LightningCLI class (``set_lightning.lightning_cli``), the Lightning module and data, never the reverse.
"""
