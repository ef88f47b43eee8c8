"""A tiny code location for tests/test_reliability.py: one asset that takes the GPU lock as the GPU assets do.

With ``hold: true`` it keeps the lock until its process is killed.
"""

import signal

import dagster as dg

from assets.resources import JsonIOManager, ZFSettings


class HoldConfig(dg.Config):
    hold: bool = False


@dg.asset
def gpu_step(context: dg.AssetExecutionContext, config: HoldConfig, settings: ZFSettings) -> dict:
    with settings.gpu_lock(context.log.info):
        context.log.info("holding the GPU lock")
        while config.hold:
            signal.pause()
    return {"held": config.hold}


settings = ZFSettings.from_env()
defs = dg.Definitions(
    assets=[gpu_step],
    executor=dg.in_process_executor,
    resources={"settings": settings, "io_manager": JsonIOManager(base_dir=str(settings.out / "_records"))},
)
