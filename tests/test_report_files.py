"""Files prunekit writes follow the umask (0644 by default, so a collaborator can open a report) and are
still written atomically (temporary file + rename, nothing left behind)."""
import os
import stat

import pytest

from prunekit.utils.io import atomic_write_text, current_umask


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        path = atomic_write_text(tmp_path / "report.html", "<html></html>")
        atomic_write_text(path, "<html>2</html>")  # replacing keeps the mode too
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_text() == "<html>2</html>"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left
