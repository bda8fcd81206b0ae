"""A sweep interrupted under the flat layout of the sweep modules resumes under the new one:
Tune's pickled state names classes by their old modules, which are answered while it is read."""

from __future__ import annotations

import pickle
import sys

import pytest

import dakd.sweep  # noqa: F401  (sets Ray's environment before ray is imported)
from dakd.sweep.driver import restore, tuner
from dakd.sweep.driver.restore import MOVED_MODULES, TuneStateError, old_module_paths


def _pickled_under(old: str, obj) -> bytes:
    """``obj`` pickled as the flat layout would have named it (protocol 0 writes the module as a
    line of text, so the name can be swapped for one of another length)."""
    data = pickle.dumps(obj, protocol=0)
    new = obj.__module__.encode()
    assert new in data
    return data.replace(b"c" + new + b"\n", b"c" + old.encode() + b"\n")


def test_an_old_module_path_is_answered_by_its_new_module_only_while_reading():
    data = _pickled_under("dakd.sweep.tuner", tuner._Closer)
    with pytest.raises(ModuleNotFoundError, match="dakd.sweep.tuner"):
        pickle.loads(data)
    with old_module_paths():
        assert pickle.loads(data) is tuner._Closer
    assert "dakd.sweep.tuner" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(data)


def test_every_old_path_names_a_module_that_exists():
    import importlib

    for old, new in MOVED_MODULES.items():
        assert importlib.import_module(new).__name__ == new
        assert old != new


def test_state_that_still_cannot_be_read_is_one_line(monkeypatch, tmp_path):
    from ray import tune

    def unreadable(path, **kwargs):
        raise ModuleNotFoundError("No module named 'dakd.sweep.gone'")

    monkeypatch.setattr(tune.Tuner, "restore", unreadable)
    with pytest.raises(TuneStateError) as err:
        restore.restore_tuner(str(tmp_path), trainable=None)
    line = str(err.value)
    assert "\n" not in line
    assert str(tmp_path) in line and "dakd.sweep.gone" in line and "without --resume" in line
