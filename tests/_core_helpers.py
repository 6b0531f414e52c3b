"""Shared by the low-level _core tests (test_opref.py, test_transport.py):
the msgpack test server fixture, an error mapper that keeps the runner's
fields, and a polling helper. Fixtures are imported by name into each module."""

import time

import pytest

import sandlot
from sandlot import _core

from _msgpack_server import ServerProcess


class RunnerError(Exception):
    def __init__(self, status, code, message):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("srv"))
    yield srv
    srv.stop()


@pytest.fixture
def mapper():
    _core.set_error_mapper(RunnerError)
    yield RunnerError
    # Put sandlot's own mapper back for the tests that follow.
    _core.set_error_mapper(sandlot.error_from_response)


def wait_until(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()
