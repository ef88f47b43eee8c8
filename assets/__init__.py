"""The Dagster code location of zf-pipeline: thin assets over the ``zf_pipeline`` library.

Groups follow the paper: data (section 3.1), training (section 3, Tables 1-2), features and
visualization (section 4, Figs. 3-5 and 8, Table 3), transfer (section 5, Tables 4-7, Fig. 7).
Loaded by ``workspace.yaml`` (``dagster dev``), by ``dagster asset materialize -m assets``, and without ``-m`` in
the README's activated venv (its activation exports ``DAGSTER_MODULE_NAME=assets``).
"""

import dagster as dg

from assets import training
from assets.data import data_assets
from assets.features import feature_assets
from assets.resources import JsonIOManager, ZFSettings
from assets.transfer import transfer_assets
from assets.visualization import visualization_assets

settings = ZFSettings.from_env()
definitions = [
    *data_assets(settings),
    training.zfnet_model,
    training.zfnet_model_learned,
    training.table1,
    training.table2,
    *feature_assets(settings),
    *visualization_assets,
    *transfer_assets(settings),
]

defs = dg.Definitions(
    assets=[d for d in definitions if not isinstance(d, dg.AssetChecksDefinition)],
    asset_checks=[d for d in definitions if isinstance(d, dg.AssetChecksDefinition)],
    # One process per run: heavy steps parallelize inside the library (sharding pools, torch threads, the GPU),
    # and a fully cached re-run costs one interpreter start instead of one per step.
    executor=dg.in_process_executor,
    resources={"settings": settings, "io_manager": JsonIOManager(base_dir=str(settings.out / "_records"))},
)
