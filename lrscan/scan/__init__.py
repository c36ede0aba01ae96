"""Adaptive PLR scans: find the 2A range and the best PLR at a fraction of a full grid's cost.

:mod:`lrscan.scan.search` holds the placement rules (pure functions of the observations),
:mod:`lrscan.scan.run` the rounds of training and analysis in an ordinary store.
"""

from lrscan.scan.run import Round, Scan, estimates, fine_grid, pick_flrs, select_plr
from lrscan.scan.search import QUANTITIES, Estimate, Observation, Search, drive

__all__ = ["QUANTITIES", "Estimate", "Observation", "Round", "Scan", "Search", "drive", "estimates", "fine_grid",
           "pick_flrs", "select_plr"]
