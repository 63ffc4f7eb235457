"""atomic_write: the final name holds the whole file or nothing, and no temporary is left behind."""

from __future__ import annotations

import pytest

from handsoff_ray.core._files import atomic_write


def test_atomic_write_replaces_the_file_on_success(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as fh:
        fh.write(b"new")
        assert path.read_bytes() == b"old"  # nothing visible under the final name until the block ends
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_text_mode(tmp_path):
    with atomic_write(tmp_path / "a.yaml", "w") as fh:
        fh.write("scale: 1.0\n")
    assert (tmp_path / "a.yaml").read_text() == "scale: 1.0\n"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, error):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_write(path) as fh:
            fh.write(b"half")
            raise error()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_rejects_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w'"):
        with atomic_write(tmp_path / "x", "ab"):
            pass
