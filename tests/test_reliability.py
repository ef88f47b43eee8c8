"""Issue 18, "nothing hangs, nothing lies": killed runs, two runs at once, moved and copied outputs.

The faults and what happens now are tabled in docs/results/reliability.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

import assets
from assets.cache import cached_stage
from assets.data import pixel_mean_image, source_images
from assets.features import top9, top9_complete
from assets.resources import JsonIOManager, ZFSettings, check_device
from assets.training import zfnet_model, zfnet_model_learned
from tests.test_features import batches_of, random_images, small_model
from zf_pipeline.features import extract
from zf_pipeline.io import ROOT, write_record
from zf_pipeline.models import FEATURE_LAYERS, checkpoint

REPO = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).with_name("dagster")
TINY_DEMO = {"train_per_class": 6, "val_per_class": 5, "target_per_class": 4}


class Output:
    """A subprocess whose merged stdout/stderr is collected by a thread; wait for a line without polling."""

    def __init__(self, cmd: list[str], env: dict[str, str], stdin: int | None = None) -> None:
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append("<eof>")
            self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 120) -> str:
        with self.changed:
            found = self.changed.wait_for(lambda: any(text in s for s in self.lines) or "<eof>" in self.lines, timeout)
            match = [s for s in self.lines if text in s]
        assert found and match, f"no {text!r} in the output of {self.proc.args}:\n{self.text()}"
        return match[0]

    def finish(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout)
        self.reader.join(timeout)
        return rc

    def text(self) -> str:
        return "".join(self.lines)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


@pytest.mark.slow
def test_a_killed_run_frees_the_gpu_lock_and_is_marked_failed(tmp_path: Path) -> None:
    """kill -9 of a run holding the GPU lock: the next run gets it at once and marks the dead run failed.
    A run waiting for the lock logs its holder's pid and stops on SIGINT, SIGTERM or SIGHUP."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = _env(DAGSTER_HOME=str(home), ZF_OUTPUT_ROOT=str(tmp_path / "out"), ZF_DEVICE="cpu")

    def materialize(hold: bool) -> Output:
        config = json.dumps({"ops": {"gpu_step": {"config": {"hold": hold}}}})
        return Output([str(DAGSTER), "asset", "materialize", "-m", "tests.gpu_location", "--select", "gpu_step",
                       "--config-json", config], env)

    holder = materialize(hold=True)
    holder.wait_for("holding the GPU lock")
    waiters = {sig: materialize(hold=False) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for sig, waiter in waiters.items():
        assert f"held by pid {holder.proc.pid}" in waiter.wait_for("waiting for the GPU lock (cpu)")
        waiter.proc.send_signal(sig)
        assert waiter.finish(60) != 0, f"{sig.name}: the waiting run did not stop"
    os.kill(holder.proc.pid, signal.SIGKILL)
    holder.finish()

    after = materialize(hold=False)
    assert after.finish() == 0, after.text()
    assert "waiting for the GPU lock" not in after.text()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        statuses = {r.run_id: r.status for r in runs}
        assert len(runs) == 5 and dg.DagsterRunStatus.STARTED not in statuses.values(), statuses
        killed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        assert len(killed) == 4  # the holder and the three interrupted waiters
    assert f"(pid {holder.proc.pid}) is gone: marked failed" in after.text()


BUILD_SCRIPT = textwrap.dedent("""
    import sys
    from assets.cache import cached_stage

    def build(out):
        with open(out / "builds", "a") as f:
            f.write("x")
        print("building: waiting for a line on stdin", flush=True)
        sys.stdin.readline()
        return {"file": str(out / "builds")}

    record = cached_stage(sys.argv[1], "stage", ["k"], build, log=lambda m: print(m, flush=True))
    print("cached" if record["cached"] else "built", flush=True)
""")


@pytest.mark.slow
def test_two_runs_over_one_cache_folder_build_it_once(tmp_path: Path) -> None:
    """The second process waits for the folder's builder and reuses its output; a builder killed by
    kill -9 releases the folder to the next one, which rebuilds it."""
    root = tmp_path / "out"

    def run() -> Output:
        return Output([sys.executable, "-c", BUILD_SCRIPT, str(root)], _env(), stdin=subprocess.PIPE)

    first = run()
    first.wait_for("building: waiting")
    killed_while_building = run()
    killed_while_building.wait_for(f"being built by pid {first.proc.pid}")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.finish()
    killed_while_building.wait_for("building: waiting")  # it took the folder over
    second = run()
    second.wait_for(f"being built by pid {killed_while_building.proc.pid}")
    killed_while_building.proc.stdin.write("go\n")
    killed_while_building.proc.stdin.close()
    assert killed_while_building.finish() == 0 and "built\n" in killed_while_building.lines
    assert second.finish() == 0 and "cached\n" in second.lines, second.text()
    folder = next(root.glob("stage/*"))
    assert (folder / "builds").read_text() == "xx"  # the killed build and the one that completed


def test_a_rebuild_removes_the_temporaries_of_a_killed_build(tmp_path: Path) -> None:
    def killed(out: Path) -> dict:
        (out / ".last.pt.tmp-99999-deadbeef").write_bytes(b"partial checkpoint")
        (out / "epochs" / ".e1.pt.tmp-99999-cafe").mkdir(parents=True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_stage(tmp_path, "train", ["k"], killed, log=lambda _: None)
    logged = []
    record = cached_stage(tmp_path, "train", ["k"], lambda out: {"ok": True}, log=logged.append)
    folder = Path(record["path"])
    assert not [p for p in folder.rglob("*") if ".tmp-" in p.name]
    assert sum("left by a killed build" in m for m in logged) == 2


def test_a_killed_probe_build_resumes_at_the_probe_it_was_on(tmp_path: Path, monkeypatch) -> None:
    """Table 7 probes seven layers for minutes each: a call cut off at conv4 must not probe conv1-3 again."""
    import numpy as np

    from assets import transfer
    from zf_pipeline.transfer import protocol

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    ids = [f"img{i}" for i in range(len(y))]
    monkeypatch.setattr(transfer.loading, "load_features",
                        lambda folder, layer: (rng.normal(size=(len(y), 4)).astype("float32"), y, ids))
    probed, kill_at = [], ["svm/conv2"]
    real = protocol.evaluate_splits

    def evaluate(X, y, ids, table, config, layer):
        if f"{config.kind}/{layer}" in kill_at:
            kill_at.clear()
            raise KeyboardInterrupt
        probed.append(f"{config.kind}/{layer}")
        return real(X, y, ids, table, config, layer=layer)

    monkeypatch.setattr(transfer.protocol, "evaluate_splits", evaluate)
    settings = ZFSettings(output_root=str(tmp_path), device="cpu")
    cfg = transfer.ProbeSettings(splits=2, c_grid=[1.0], cv_folds=2)
    context = type("Context", (), {"log": type("Log", (), {"info": staticmethod(lambda m: None)})})()
    probe_list = [("svm", "conv1"), ("softmax", "conv1"), ("svm", "conv2"), ("softmax", "conv2")]
    run = lambda: transfer.pretrained_runs(context, settings, cfg, "table7_x", {"extraction": str(tmp_path),  # noqa: E731
                                                                                 "fingerprint": "f"}, probe_list, [5])
    with pytest.raises(KeyboardInterrupt):
        run()
    assert probed == ["svm/conv1", "softmax/conv1"]
    record = run()
    assert probed == ["svm/conv1", "softmax/conv1", "svm/conv2", "softmax/conv2"]  # conv1 is not probed again
    runs = pq.read_table(record["runs"])
    assert runs.num_rows == 4 * 2 and sorted(set(runs.column("layer").to_pylist())) == ["conv1", "conv2"]


@pytest.mark.slow
def test_an_interrupted_table_ends_the_trainings_it_started(tmp_path: Path) -> None:
    """Tables 1, 2 and 4 train several networks at once in child processes: neither an interrupt (Ctrl-C, a stop
    from the UI) nor a `kill -9` of the run may leave them training on."""
    script = textwrap.dedent(f"""
        import signal, sys
        from pathlib import Path
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as under a terminal or Dagster
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_train import CLASSES, FAST, SIZE, _config, _images
        from shard_writer import write_mean, write_split
        from assets.resources import ZFSettings
        from assets.training import train_all
        root = Path({str(tmp_path)!r})
        for split, n, seed in (("train", 48, 0), ("val", 18, 1)):
            write_split(*_images(n, seed), root / split, split, CLASSES, size=SIZE, per_shard=8)
        write_mean(root / "train", root / "pixel_mean.npy")
        log = type("Log", (), {{"info": staticmethod(lambda m: print(m, flush=True))}})
        train_all(type("Context", (), {{"log": log}})(), ZFSettings(output_root=str(root / "out"), device="cpu"),
                  [_config(root, "", epochs=10_000, seed=s, **FAST) for s in (1, 2)], ["u"], "inprocess", jobs=2)
    """)
    for stop in (signal.SIGINT, signal.SIGKILL):
        run = Output([sys.executable, "-c", script], _env())
        children = [int(re.search(r"in pid (\d+)", run.wait_for(f"(seed {seed}) in pid")).group(1))
                    for seed in (1, 2)]
        run.proc.send_signal(stop)
        assert run.finish() != 0
        for pid in children:  # SIGINT: terminated by the asset; SIGKILL: by the kernel, as their parent died
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text():
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"training pid {pid} outlived its run ({stop.name})")


def _chain(root: Path) -> tuple[ZFSettings, list, dict]:
    settings = ZFSettings(output_root=str(root), device="cpu")
    resources = {"settings": settings, "io_manager": JsonIOManager(base_dir=str(settings.out / "_records"))}
    train = assets.data.shard_asset("imagenet_train_shards", "imagenet", "train", "train")[0]
    val = assets.data.shard_asset("imagenet_val_shards", "imagenet", "val", "val")[0]
    selection = [source_images, train, val, pixel_mean_image, zfnet_model]
    config = dg.RunConfig({"source_images": {"config": TINY_DEMO},
                           "zfnet_model": {"config": {"epochs": 1, "width": 0.125, "batch_size": 16}}})
    assert dg.materialize(selection, resources=resources, run_config=config).success
    names = ["source_images", "imagenet_train_shards", "imagenet_val_shards", "pixel_mean_image", "zfnet_model"]
    return settings, names, {n: settings.record(n) for n in names}


@pytest.mark.slow
def test_a_moved_or_copied_output_root_resolves_to_itself(tmp_path: Path) -> None:
    """After ``mv outputs elsewhere`` every step is a cache hit whose paths lie under the new root, and the
    checkpoint loads; a copy of the root points into the copy, never back at the original."""
    settings, names, before = _chain(tmp_path / "outputs")
    raw = (settings.out / "_records" / "zfnet_model.json").read_text()
    assert str(settings.out) not in raw and f'"{ROOT}/train/' in raw

    moved = tmp_path / "elsewhere"
    shutil.move(settings.out, moved)
    settings, _, after = _chain(moved)
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    _, _, copied = _chain(copy)
    for root, records in ((moved, after), (copy, copied)):
        for name in names[1:]:
            assert records[name]["cached"] and records[name]["fingerprint"] == before[name]["fingerprint"], name
        text = json.dumps(records)
        assert str(tmp_path / "outputs") not in text and (root == copy or str(copy) not in text)
        assert records["imagenet_train_shards"]["path"].startswith(f"{root}/")
        assert checkpoint.load_model(records["zfnet_model"]["checkpoint"]) is not None
        assert Path(records["zfnet_model"]["config"]["mean"]) == Path(records["pixel_mean_image"]["file"])
        assert Path(records["pixel_mean_image"]["file"]).is_relative_to(root)
    assert str(moved) not in json.dumps(copied)


def test_zf_device_is_checked_up_front(monkeypatch) -> None:
    for bad, expected in (
        ("nonsense", "is not a torch device"),
        ("gpu", "is not a torch device"),
        ("meta", "runs on cpu or cuda"),
    ):
        monkeypatch.setenv("ZF_DEVICE", bad)
        with pytest.raises(ValueError, match=f"ZF_DEVICE='{bad}'.*{expected}"):
            ZFSettings.from_env()
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=f"ZF_DEVICE='cuda:{count}', but this machine has {count} usable CUDA"):
        check_device(f"cuda:{count}")
    assert check_device("cpu") == "cpu" and check_device("") == ""


def _section(markdown: str, title: str) -> str:
    start = markdown.index(f"## {title}\n")
    return markdown[start : markdown.find("\n## ", start + 1)]


def _top9_run(root: Path) -> None:
    """The top9 asset (and its check) over a small extraction recorded as features/imagenet_val/conv1."""
    settings = ZFSettings(output_root=str(root), device="cpu")
    extraction = settings.out / "features_imagenet_val" / "0123456789abcdef" / "extraction"
    ids = [f"n0{i % 3}/img_{i:02d}" for i in range(12)]
    extract(
        small_model(), batches_of(random_images(12), ids, 4), extraction, split="val", layers=("conv1", "conv5", "fc6")
    )
    keys = [dg.AssetKey(["features", "imagenet_val", layer]) for layer in FEATURE_LAYERS]
    write_record(
        settings.out / "_records" / "features" / "imagenet_val" / "conv1.json",
        {"extraction": str(extraction), "fingerprint": "0123456789abcdef", "path": str(extraction.parent)},
        settings.out,
    )
    resources = {"settings": settings, "io_manager": JsonIOManager(base_dir=str(settings.out / "_records"))}
    result = dg.materialize(
        [top9, top9_complete, *[dg.AssetSpec(k) for k in keys]], resources=resources, selection=[top9.key]
    )
    assert result.success


def test_the_readme_duckdb_snippets_run_as_written_under_an_odd_path(tmp_path: Path, monkeypatch) -> None:
    """The README's Python and CLI queries, run from a folder whose name holds '[', ',', "'" and a space
    (each breaks a DuckDB glob, file_search_path or string literal), then again after moving the outputs."""
    section = _section((REPO / "README.md").read_text(), "Query the features with DuckDB")
    python, = re.findall(r"```python\n(.*?)```", section, re.S)
    shell, = re.findall(r"```bash\n(.*?)```", section, re.S)
    odd = tmp_path / "runs [1], it's here"
    _top9_run(odd / "outputs")
    env = _env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for where in (odd, tmp_path / "moved, [again]"):
        if not where.exists():
            shutil.move(odd, where)
        monkeypatch.chdir(where)
        scope: dict = {}
        exec(python, scope)
        rows = (
            scope["con"]
            .sql("SELECT rank, image_id FROM top9 WHERE layer = 'conv5' AND channel = 7 ORDER BY rank")
            .fetchall()
        )
        assert [r[0] for r in rows] == list(range(1, 10))
        assert scope["con"].sql("SELECT count(DISTINCT layer) FROM activations").fetchall() == [(3,)]
        cli = subprocess.run(["bash", "-c", shell], cwd=where, env=env, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert re.search(r"conv5\s*│\s*\d+\s*│\s*\d+", cli.stdout), cli.stdout


@pytest.mark.parametrize("err,passed", [(95.0, False), (float("nan"), False), (40.0, True)])
def test_the_blocking_training_check_states_error_and_chance(tmp_path: Path, err: float, passed: bool) -> None:
    settings = ZFSettings(output_root=str(tmp_path), device="cpu")
    model = small_model()  # 5 classes: chance is 80% error
    path = checkpoint.save_checkpoint(tmp_path / "train" / "fp" / "last.pt", model, model.config, epoch=1)
    write_record(settings.out / "_records" / "zfnet_model.json",
                 {"checkpoint": str(path), "final": {"val_center_top1_err": err}}, settings.out)
    result = zfnet_model_learned(settings=settings)
    assert result.passed is passed
    verdict = "below" if passed else "not below"
    assert result.description == f"val top-1 error {err:.2f}% is {verdict} chance (80.00%, 5 classes)"
