"""The demo facility's Dispatcher filter: the data collection's images, looked up once."""

from __future__ import annotations

import sqlite3

import pytest

from zocalo.examples.lookup import DATABASE_VARIABLE, UnknownCollection, look_up_collection


@pytest.fixture
def facility_database(tmp_path, monkeypatch) -> None:
    path = tmp_path / "facility.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE data_collections (dcid INTEGER PRIMARY KEY, beamline TEXT, "
            "directory TEXT, template TEXT, first_image INTEGER, last_image INTEGER)"
        )
        db.execute("INSERT INTO data_collections VALUES (1001, 'sim01', '/d', 'i_###.pgm', 3, 7)")
    monkeypatch.setenv(DATABASE_VARIABLE, f"sqlite:///{path}")


def test_the_filter_adds_the_collections_image_parameters(facility_database):
    message = {"recipes": ["mini-facility"]}
    parameters = {"ispyb_dcid": 1001, "guid": "x"}
    assert look_up_collection(message, parameters) == (
        {"recipes": ["mini-facility"]},
        {
            "ispyb_dcid": 1001,
            "guid": "x",
            "ispyb_beamline": "sim01",
            "ispyb_image_directory": "/d",
            "ispyb_image_template": "i_###.pgm",
            "ispyb_image_first": 3,
            "ispyb_image_last": 7,
            "ispyb_image_count": 5,
            "ispyb_processing_directory": "/processing/dc1001",
        },
    )


def test_a_collection_the_database_does_not_know_refuses_the_request(facility_database):
    with pytest.raises(UnknownCollection, match="data collection 999 is not in"):
        look_up_collection({}, {"ispyb_dcid": "999"})


def test_without_its_database_or_a_collection_the_filter_leaves_a_request_alone(
    facility_database, monkeypatch
):
    assert look_up_collection({}, {"image": 7}) == ({}, {"image": 7})
    monkeypatch.delenv(DATABASE_VARIABLE)
    assert look_up_collection({}, {"ispyb_dcid": 1001}) == ({}, {"ispyb_dcid": 1001})
