"""Input files that exist but are not regular files: a recipe that is a FIFO (reading it would block on a
writer), a data file that is a symbolic link loop. Each is one line saying so, not "not found"."""

from __future__ import annotations

import os

import pytest

from ptq_bench.cli import main
from ptq_bench.data import data_file
from ptq_bench.errors import DataError


def test_a_recipe_that_is_a_fifo_is_named_as_such(tmp_path, capsys):
    os.mkfifo(tmp_path / "r.yaml")
    assert main(["validate", str(tmp_path / "r.yaml")]) == 2
    assert "not a regular file: " in capsys.readouterr().err


def test_a_data_file_that_is_a_link_loop_is_named_as_such(tmp_path):
    (tmp_path / "t").mkdir()
    os.symlink("test.jsonl", tmp_path / "t" / "test.jsonl")  # points at itself
    with pytest.raises(DataError, match="data file is a link to nothing: "):
        data_file(tmp_path, "t/test.jsonl")
    os.mkfifo(tmp_path / "t" / "fifo.jsonl")
    with pytest.raises(DataError, match="data file is not a regular file: "):
        data_file(tmp_path, "t/fifo.jsonl")
