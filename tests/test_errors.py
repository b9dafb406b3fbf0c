"""One error hierarchy: every error plmscreen raises on purpose is a PlmscreenError whose class
names its stage and carries the exit code the CLI uses."""

import subprocess
import sys

import pytest

from plmscreen.screening import errors
from plmscreen.screening.input import InvalidFastaError
from plmscreen.screening.model.checkpoints import ModelLoadError
from plmscreen.screening.score.repeats import InvalidSequenceError
from plmscreen.screening.store.guard import QueryLimitExceeded
from plmscreen.screening.errors import QueryError, QueryRefused, SchemaVersionError, StoreError
from plmscreen.screening.experiments.settings import ValidationInputError
from plmscreen.screening.errors import CatalogError


@pytest.mark.parametrize("cls, stage, code", [
    (InvalidFastaError, errors.InputError, 2), (InvalidSequenceError, errors.InputError, 2),
    (ValidationInputError, errors.InputError, 2), (ModelLoadError, errors.ModelError, 2),
    (StoreError, errors.StoreError, 2), (SchemaVersionError, errors.StoreError, 2), (QueryRefused, errors.StoreError, 2),
    (QueryError, errors.StoreError, 2), (QueryLimitExceeded, errors.QueryLimitError, 3),
    (CatalogError, errors.CatalogError, 2),
])
def test_each_error_has_its_stage_and_exit_code(cls, stage, code):
    assert issubclass(cls, stage) and issubclass(cls, errors.PlmscreenError)
    assert cls.exit_code == code


def test_cluster_lost_is_a_cluster_error_with_its_own_code():
    from plmscreen.flows.screen import ClusterLostError

    assert issubclass(ClusterLostError, errors.ClusterError) and ClusterLostError.exit_code == errors.EXIT_CLUSTER_LOST == 5
    assert len({errors.EXIT_BAD_INPUT, errors.EXIT_QUERY_LIMIT, errors.EXIT_SHARDS_FAILED, errors.EXIT_CLUSTER_LOST,
                errors.EXIT_UNEXPECTED}) == 5


def test_input_errors_are_still_value_errors():
    """Callers that caught ValueError for bad input keep working."""
    assert issubclass(errors.InputError, ValueError)


def test_cli_exits_with_the_errors_code(tmp_path):
    bad = tmp_path / "bad.fasta"
    bad.write_text(">a\nMK1V\n")
    done = subprocess.run([sys.executable, "-m", "plmscreen.cli.main", "screen", str(bad), "--out", str(tmp_path / "o"),
                           "--in-process"], capture_output=True, text=True, timeout=120)
    assert done.returncode == InvalidFastaError.exit_code == 2
    assert done.stderr.startswith("plmscreen: error:") and "a" in done.stderr
    missing = subprocess.run([sys.executable, "-m", "plmscreen.cli.main", "screen", str(bad), "--out", str(tmp_path / "o"),
                              "--model", str(tmp_path / "none.pt"), "--skip-invalid", "--in-process"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == ModelLoadError.exit_code and "checkpoint not found" in missing.stderr
