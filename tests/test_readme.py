"""The README's set-up, as a user runs it: the bare ``dagster asset materialize --select ...`` in the
activated environment, from a fresh checkout of the tree."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_DEMO = {"ops": {"source_images": {"config": {"train_per_class": 2, "val_per_class": 5, "target_per_class": 2}}}}


def setup_step() -> str:
    """The README's first command's step that puts the code location into the venv's activation."""
    readme = (REPO / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)\n", readme).group(1)
    steps = [s for s in first.split(" && ") if s.endswith(">> .venv/bin/activate")]
    assert len(steps) == 1, f"README's first command has no single '... >> .venv/bin/activate' step: {first}"
    assert first.endswith("dagster asset materialize --select '*atlas'"), first
    return steps[0]


def fresh_checkout(dest: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files, as a clone of this tree would hold them."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def test_ci_sets_up_the_venv_as_the_readme_does() -> None:
    assert setup_step() in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_the_bare_materialize_command_works_after_the_readme_set_up(tmp_path: Path) -> None:
    """Without the set-up step dagster cannot find the code location; with it the literal command runs."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if not activate.exists():
        pytest.skip(f"tests run outside a virtual environment ({sys.prefix} has no bin/activate)")
    clone = fresh_checkout(tmp_path / "clone")
    (clone / ".venv" / "bin").mkdir(parents=True)
    # This venv's activation sets PATH as `python3 -m venv` would; the set-up's export (present when this venv was
    # made by .ci/run or the README) is left out, so the copy starts as a plain venv.
    plain = [line for line in activate.read_text().splitlines(keepends=True) if "DAGSTER_MODULE_NAME" not in line]
    (clone / ".venv" / "bin" / "activate").write_text("".join(plain))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "ZF_", "VIRTUAL_ENV"))}
    env["ZF_OUTPUT_ROOT"] = str(tmp_path / "outputs")
    command = f"dagster asset materialize --select source_images --config-json '{json.dumps(TINY_DEMO)}'"

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f". .venv/bin/activate && {command}"], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=300)

    before = run()
    assert before.returncode != 0 and "Invalid set of CLI arguments" in before.stderr + before.stdout
    subprocess.run(["bash", "-c", setup_step()], cwd=clone, check=True)
    after = run()
    assert after.returncode == 0, after.stderr[-3000:]
    record = json.loads((tmp_path / "outputs" / "_records" / "source_images.json").read_text())
    assert record["demo"] is True and record["roots"]["imagenet"]
