"""``zocalo demo``: a mini-facility, from detector to database.

A simulated detector writes small synthetic diffraction images; each data collection
goes through the Dispatcher (whose lookup filter turns its ID into parameters), has
its images' spots found by several worker processes, is gathered by Join, summed up,
written to a SQLite results database by DatabaseWriter, and replied to. The modules:

``facility``  the folder everything lives in: configuration, recipes, databases
``detector``  the simulated detector
``run``       one run: services, acquisition, requests, waiting, measuring
``watch``     the replies and per-image progress the run listens to
``board``     each collection's progress, for a live view
``result``    what a run measured
"""

from zocalo.demo.board import Board, CollectionProgress
from zocalo.demo.result import STAGES, DemoResult
from zocalo.demo.run import BUDGET_SECONDS, DemoSettings, run_demo

__all__ = [
    "BUDGET_SECONDS",
    "STAGES",
    "Board",
    "CollectionProgress",
    "DemoResult",
    "DemoSettings",
    "run_demo",
]
