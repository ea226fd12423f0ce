"""Launchers: papermill sweeps over networks x seeds, on this machine or on Slurm (submitit).
A run on several processes is started by torchrun itself (see reproresnet/distributed.py)."""

from .sweep import DEFAULT_NOTEBOOK, execute_run, notebook_config  # what the campaign's pages use

__all__ = ["DEFAULT_NOTEBOOK", "execute_run", "notebook_config"]
