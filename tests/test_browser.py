"""In a real (headless) Chromium: the atlas opened from disk, and the Dagster UI on a materialized demo.

Needs ``chromium`` and ``chromium-driver`` (Debian) and ``selenium``; skips with the install
command when they are missing. Screenshots are saved to ZF_ARTIFACTS (default tests/artifacts/).
Everything stays on loopback and in temporary folders: the Dagster instance (DAGSTER_HOME) and
the outputs (ZF_OUTPUT_ROOT) live under pytest's tmp_path, not in the repository.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from atlas_fixtures import brute_force_top9, demo_images, tiny_model
from browser import headless_chromium, loaded_images, require_browser, screenshot, wait_until

from zf_pipeline.atlas import build_atlas
from zf_pipeline.data.readers import ROOT_ENV

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The demo, kept small: source_images' config (assets/data.py DemoConfig).
DEMO_CONFIG = {"ops": {"source_images": {"config": {"train_per_class": 8, "val_per_class": 5, "target_per_class": 2}}}}
MATERIALIZE_TIMEOUT = 240
pytestmark = pytest.mark.slow  # about 20 s (atlas) and 70 s (materialize, dagster dev, browser) on 2 cores
SERVER_TIMEOUT = 120
UI_TIMEOUT = 60


# ---------------------------------------------------------------- the atlas from disk


def _waiter(driver) -> Callable[[Callable[[], T], str], T]:
    """``wait(condition, what)``: :func:`wait_until` on this page, reporting it on a timeout."""
    return lambda condition, what: wait_until(condition, what, UI_TIMEOUT, driver=driver)


def _all_loaded(driver, css: str, count: int) -> list[dict] | None:
    """The images matching ``css`` once there are ``count`` of them and all have finished loading."""
    imgs = loaded_images(driver, css)
    return imgs if len(imgs) == count and all(i["complete"] for i in imgs) else None


def check_atlas(index: Path, name: str, layer: str | None = None) -> int:
    """Open the atlas at ``index`` from disk: the layer page (default: the last layer) loads every thumbnail,
    the page of its second map shows nine projections and nine patches, all loaded, and ArrowRight goes to
    the third map. Screenshots ``<name>_layer`` and ``<name>_unit``; returns the number of thumbnails."""
    with headless_chromium(width=1000, height=800) as driver:  # a unit page fits; a compact screenshot
        wait = _waiter(driver)
        driver.get(index.as_uri())
        links = wait(lambda: driver.find_elements("css selector", 'table a[href$="/index.html"]'),
                     "the layer list of the atlas index")
        link = links[-1] if layer is None else next(a for a in links if a.text == layer)
        layer = link.text
        link.click()
        maps = wait(lambda: driver.find_elements("css selector", ".maps a"), f"the maps of {layer}")
        ids = [a.get_attribute("id") for a in maps]
        thumbs = wait(lambda: _all_loaded(driver, ".maps img", len(ids)), f"the {len(ids)} thumbnails of {layer}")
        assert all(i["width"] > 0 for i in thumbs), thumbs
        driver.execute_script("window.scrollTo(0, 0)")
        screenshot(driver, f"{name}_layer")
        assert len(ids) >= 3, f"{layer} shows {len(ids)} maps; the walk below needs 3"
        second, third = (int(i.removeprefix("m")) for i in ids[1:3])
        driver.find_element("css selector", f"a#m{second}").click()
        wait(lambda: driver.title == f"{layer} map {second}", f"the page of {layer} map {second}")
        projections = wait(lambda: _all_loaded(driver, ".grid.p img", 9), "the nine projections")
        patches = wait(lambda: _all_loaded(driver, ".grid.i img", 9), "the nine image patches")
        assert len({i["src"] for i in projections}) == 9
        assert all(i["width"] > 0 for i in projections + patches), projections + patches
        driver.execute_script("window.scrollTo(0, 0)")
        screenshot(driver, f"{name}_unit")
        driver.find_element("css selector", "body").send_keys("\ue014")  # ArrowRight walks the layer
        wait(lambda: driver.title == f"{layer} map {third}", "the next map's page after ArrowRight")
    return len(thumbs)


def test_atlas_unit_page_shows_nine_projections_from_disk(tmp_path: Path) -> None:
    require_browser()
    model = tiny_model(width=0.1)
    images, mean = demo_images(tmp_path / "demo")
    rows = brute_force_top9(model, images)
    index = build_atlas(tmp_path / "atlas", model, rows, images, mean=mean, layers=["conv1", "conv2", "conv5"])
    assert check_atlas(index, "atlas", "conv2") == model.get_submodule("conv2").out_channels


def test_atlas_of_a_trained_model_from_disk() -> None:
    """The same checks on an atlas made by the pipeline (ZF_ATLAS_SITE: its folder), e.g. for the README's
    screenshot."""
    site = os.environ.get("ZF_ATLAS_SITE")
    if not site:
        pytest.skip("set ZF_ATLAS_SITE to the folder of an atlas built by the pipeline to check it in the browser")
    require_browser()
    index = Path(site) / "index.html"
    assert index.is_file(), f"ZF_ATLAS_SITE={site} holds no index.html"
    check_atlas(index.resolve(), "atlas_trained")


# ---------------------------------------------------------------- the Dagster UI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _instance(home: Path) -> None:
    """The repository's dagster.yaml with every relative ``base_dir`` moved under ``home``."""

    def move(node: object) -> object:
        if isinstance(node, dict):
            return {
                k: (str(home / v) if k == "base_dir" and not Path(v).is_absolute() else move(v))
                for k, v in node.items()
            }
        return node

    config = move(yaml.safe_load((REPO / "dagster.yaml").read_text()))
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory) -> Iterator[str]:
    """``dagster dev`` on loopback over a temporary instance where the demo's train shards are materialized."""
    require_browser()
    root = tmp_path_factory.mktemp("dagster")
    _instance(root / "home")
    env = {k: v for k, v in os.environ.items() if k not in ROOT_ENV.values()}  # no dataset configured: the demo
    env.update(DAGSTER_HOME=str(root / "home"), ZF_OUTPUT_ROOT=str(root / "outputs"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    log = root / "materialize.log"
    with log.open("w") as out:
        done = subprocess.run(
            [str(BIN / "dagster"), "asset", "materialize", "-m", "assets", "--select", "+imagenet_train_shards",
             "--config-json", json.dumps(DEMO_CONFIG)],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=MATERIALIZE_TIMEOUT,
        )
    assert done.returncode == 0, f"dagster asset materialize failed:\n{_tail(log)}"
    port = _free_port()
    server_log = root / "dev.log"
    with server_log.open("w") as out:
        server = subprocess.Popen(
            [str(BIN / "dagster"), "dev", "-m", "assets", "-h", "127.0.0.1", "-p", str(port)],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            if server.poll() is not None:
                pytest.fail(f"dagster dev exited with {server.returncode}:\n{_tail(server_log)}")
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as r:
                return r.status == 200

        wait_until(answers, f"dagster dev to answer on {url}", SERVER_TIMEOUT, interval=1.0)
        yield url
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """Stop dagster dev and its children (webserver, daemon, code servers): SIGTERM to its process group,
    SIGKILL to whatever of the group is left after a grace period (SIGTERM is ignored where SIGINT is)."""

    def signal_group(sig: int) -> bool:
        try:
            os.killpg(server.pid, sig)
            return True
        except ProcessLookupError:  # the whole group is gone
            return False

    signal_group(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while signal_group(0) and time.monotonic() < deadline:
        time.sleep(0.5)
    signal_group(signal.SIGKILL)
    server.wait(timeout=10)


def _skip_welcome(driver) -> None:
    """Close Dagster's first-visit "join the community" dialog if it shows (a fresh browser profile)."""
    driver.execute_script(
        "Array.from(document.querySelectorAll('button')).filter(function(b){return b.innerText.trim()==='Skip';})"
        ".forEach(function(b){b.click();});"
    )


def _node_texts(driver) -> list[str]:
    """The text of each asset node drawn in the lineage graph (SVG foreignObjects)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('svg foreignObject')).map(function(f){return f.textContent;});"
    )


def test_dagster_ui_graph_and_asset_metadata_image(dagster_ui: str) -> None:
    with headless_chromium(width=1600, height=1000) as driver:
        wait = _waiter(driver)
        # The asset's lineage graph: centred on it whatever the size of the whole graph (only nodes in view
        # are drawn, and the global graph collapses groups once there are several).
        driver.get(f"{dagster_ui}/assets/imagenet_train_shards?view=lineage")
        wait(lambda: any("imagenet_train_shards" in t and "Materialized" in t for t in _node_texts(driver)),
             "the asset graph's node imagenet_train_shards, shown as materialized")
        nodes = _node_texts(driver)
        assert all(any(name in t for t in nodes) for name in ("source_images", "pixel_mean_image")), nodes
        time.sleep(1)  # the welcome dialog opens a moment after the page
        _skip_welcome(driver)
        wait(lambda: not driver.execute_script("return document.querySelector('[role=dialog]')"), "no dialog")
        screenshot(driver, "dagster_graph")

        driver.get(f"{dagster_ui}/assets/imagenet_train_shards")
        show = wait(lambda: [b for b in driver.find_elements("css selector", "button, a") if "Show Markdown" in b.text],
                    "the 'samples' metadata entry ([Show Markdown])")
        _skip_welcome(driver)
        show[0].click()
        image = wait(lambda: [i for i in loaded_images(driver, "[role=dialog] img")
                              if i["src"].startswith("data:image/png") and i["complete"]],
                     "the inline samples image in the metadata dialog")
        assert image[0]["width"] > 0, image
        screenshot(driver, "dagster_asset_samples")
