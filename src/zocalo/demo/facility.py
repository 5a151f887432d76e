"""The demo facility on disk: one folder with its images, databases, recipes and configuration.

::

    <root>/site.yaml           the site configuration every service runs with
    <root>/recipes/            the recipe library: mini-facility.json
    <root>/images/dc<DCID>/    each data collection's image files
    <root>/results.db          the facility database: data_collections (written when a
                               collection is acquired), spot_finding (DatabaseWriter's rows)
    <root>/join.db             Join's state
    <root>/processing/dc<DCID>/  each collection's integration job: its recipe-wrapper
                               file, run.out and run.err
    <root>/cluster-jobs.db     ClusterSubmission's job record; cluster-jobs.local/ its
                               local runner's job folders
    <root>/broker.db           the embedded broker (unless the demo runs on another)
    <root>/services.log        what the service processes logged

The folder stays after the demo, so that its results can be looked at.
"""

from __future__ import annotations

import json
import shlex
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from zocalo.demo.detector import Collection
from zocalo.services.cluster_submission import local_jobs_folder
from zocalo.services.dbwriter import LEDGER
from zocalo.wrapper.backends.local import LocalBackend

#: The recipe every data collection runs.
RECIPE = "mini-facility"
#: The table the recipe's DatabaseWriter step writes.
RESULTS_TABLE = "spot_finding"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS data_collections (
    dcid INTEGER PRIMARY KEY, beamline TEXT NOT NULL, directory TEXT NOT NULL,
    template TEXT NOT NULL, first_image INTEGER NOT NULL, last_image INTEGER NOT NULL,
    started_at REAL NOT NULL, finished_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS {RESULTS_TABLE} (
    dcid INTEGER NOT NULL, recipe_id TEXT NOT NULL, images INTEGER NOT NULL,
    complete BOOLEAN NOT NULL, spots INTEGER NOT NULL, spots_per_image TEXT NOT NULL,
    intensity INTEGER);
"""

#: What the printed ``sqlite3`` command shows: one line per data collection.
RESULTS_QUERY = (
    f"SELECT dcid, beamline, images, spots, intensity, complete FROM data_collections "
    f"JOIN {RESULTS_TABLE} USING (dcid)"
)


@dataclass(frozen=True)
class RecordedCollection:
    """A row of the results table."""

    dcid: int
    recipe_id: str
    images: int
    complete: bool
    spots: int
    #: The integration job's result (None: the row was written without one).
    intensity: int | None


@dataclass(frozen=True)
class Site:
    """The facility's folder (see the module docstring)."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def recipes(self) -> Path:
        return self.root / "recipes"

    @property
    def config(self) -> Path:
        return self.root / "site.yaml"

    @property
    def results_db(self) -> Path:
        return self.root / "results.db"

    @property
    def results_url(self) -> str:
        return f"sqlite:///{self.results_db}"

    @property
    def join_url(self) -> str:
        return f"sqlite:///{self.root / 'join.db'}"

    @property
    def broker_url(self) -> str:
        return f"sqlite:///{self.root / 'broker.db'}"

    @property
    def cluster_jobs(self) -> Path:
        return self.root / "cluster-jobs.db"

    def _local_jobs(self) -> LocalBackend | None:
        folder = local_jobs_folder(self.cluster_jobs)
        return LocalBackend(folder) if folder.is_dir() else None

    def wait_for_jobs(self, timeout: float) -> bool:
        """Wait until every integration job the local runner started has ended (its
        wrapper reported before its process ends); False if one still runs at ``timeout``."""
        jobs = self._local_jobs()
        return jobs is None or _all_ended(jobs, jobs.job_ids(), timeout)

    def stop_jobs(self, timeout: float) -> bool:
        """Cancel every local job that has not ended (its runner stops the script's whole
        process group) and wait for them to end: nothing of the demo outlives it, when
        it is interrupted or its wait for the jobs ran out. False if one still runs."""
        jobs = self._local_jobs()
        if jobs is None:
            return True
        running = [
            job for job, state in jobs.states(jobs.job_ids()).items() if state and not state.ended
        ]
        for job_id in running:
            jobs.cancel(job_id)
        return _all_ended(jobs, running, timeout, runners=True)

    @property
    def log(self) -> Path:
        return self.root / "services.log"

    @classmethod
    def create(cls, root: Path) -> Site:
        """Lay the facility out in ``root`` (created if need be; not one used before)."""
        site = cls(root)
        if site.results_db.exists():
            raise ValueError(f"{root} holds a demo facility already: give a new folder")
        site.images.mkdir(parents=True, exist_ok=True)
        site.recipes.mkdir(exist_ok=True)
        recipe = resources.files("zocalo.examples").joinpath(f"recipes/{RECIPE}.json")
        (site.recipes / f"{RECIPE}.json").write_text(recipe.read_text())
        storage = {
            "plugin": "storage",
            "zocalo.recipe_directory": str(site.recipes),
            "zocalo.join.database": site.join_url,
            "zocalo.dbwriter.database": site.results_url,
        }
        config = {
            "version": 1,
            "demo-storage": storage,
            "environments": {"default": ["demo-storage"]},
        }
        # JSON is YAML, with every path quoted whatever it holds.
        site.config.write_text(json.dumps(config, indent=2) + "\n")
        with site._connect() as db:
            db.executescript(_SCHEMA)
        return site

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.results_db, timeout=30)

    def record_collection(self, collection: Collection, beamline: str) -> None:
        """The facility's record of an acquired data collection (what the lookup reads)."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO data_collections VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    collection.dcid,
                    beamline,
                    str(collection.directory),
                    collection.template,
                    collection.first,
                    collection.last,
                    collection.started_at,
                    collection.finished_at,
                ),
            )

    def recorded(self) -> list[RecordedCollection]:
        """Every row DatabaseWriter wrote to the results table."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT dcid, recipe_id, images, complete, spots, intensity FROM {RESULTS_TABLE}"
            ).fetchall()
        return [
            RecordedCollection(
                int(dcid),
                str(recipe),
                int(images),
                bool(complete),
                int(spots),
                None if intensity is None else int(intensity),
            )
            for dcid, recipe, images, complete, spots, intensity in rows
        ]

    def written_at(self) -> dict[str, float]:
        """When DatabaseWriter wrote each recipe's results row (from its ledger)."""
        with self._connect() as db:
            exists = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LEDGER,)
            ).fetchone()
            if not exists:
                return {}
            rows = db.execute(
                f"SELECT recipe_id, MIN(written_at) FROM {LEDGER} WHERE table_name = ? "
                "GROUP BY recipe_id",
                (RESULTS_TABLE,),
            ).fetchall()
        return {str(recipe): float(written) for recipe, written in rows}

    def sqlite3_command(self) -> str:
        """One command that shows the results."""
        database, query = shlex.quote(str(self.results_db)), shlex.quote(RESULTS_QUERY)
        return f"sqlite3 -header -column {database} {query}"


def _all_ended(
    jobs: LocalBackend, job_ids: list[int], timeout: float, runners: bool = False
) -> bool:
    """Wait until each of ``job_ids`` has ended (or is gone), and with ``runners`` until
    their runners have exited too; False at ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = jobs.states(job_ids).values()
        if all(state is None or state.ended for state in states) and not (
            runners and any(jobs.runner_running(job_id) for job_id in job_ids)
        ):
            return True
        time.sleep(0.05)
    return False
