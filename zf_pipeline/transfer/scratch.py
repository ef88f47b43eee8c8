"""The paper's "non-pretrained" rows of Tables 4 and 5: the same network trained from scratch on one
split's training images (same recipe as the ImageNet model), scored on that split's test images."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from zf_pipeline import evaluate, train
from zf_pipeline.data import loader, pixel_mean, shards
from zf_pipeline.data.records import ImageSet
from zf_pipeline.models import checkpoint
from zf_pipeline.transfer.protocol import run_row

log = logging.getLogger(__name__)


def recipe_from_dict(config: Mapping) -> train.TrainConfig:
    """A training run's recipe from its stored ``TrainConfig.to_dict()`` (JSON turns tuples into lists)."""
    return train.TrainConfig(**{k: tuple(v) if k == "keep_epochs" else v for k, v in config.items()})


def non_pretrained_run(
    images: ImageSet, roles: Mapping[str, str], out: Path, *, size: int, recipe: train.TrainConfig, epochs: int,
    n_train: int, split_index: int, launch: Callable[[train.TrainConfig], None] | None = None,
) -> dict:
    """Shard the split's images (``roles``: image_id -> 'train' / 'test') at ``size`` under ``out``, train
    ``recipe`` on the training images for ``epochs`` (0: the recipe's), score the center crop of each test
    image; one :data:`~zf_pipeline.transfer.protocol.RUN_SCHEMA` row (method 'non-pretrained', layer 'fc8').
    ``launch`` trains the run's config elsewhere (e.g. a process of its own) instead of in this process.

    The test images are the run's val shards for its per-epoch log only: the plateau schedule (and a
    ``max_lr_drops`` stop) watches the training loss, so no choice is made on the images that score the net.

    A net whose training error stayed above half of chance's (dead ReLUs from the first steps) is
    logged and marked ``converged=False``, so the table flags it instead of silently averaging it.
    """
    for role in ("train", "test"):
        subset = [r for r in images.records if roles.get(r.image_id) == role]
        shards.write_shards(dataclasses.replace(images, split=role, records=subset), out / role, size=size,
                            progress=False)
    mean_file = out / "pixel_mean.npy"
    pixel_mean.save_pixel_mean(mean_file, pixel_mean.compute_pixel_mean(out / "train"))
    n_images = sum(role == "train" for role in roles.values())
    # Few classes x 15 images can be less than one batch of the recipe: then one batch is the whole split.
    run = dataclasses.replace(recipe, shards=str(out / "train"), val_shards=str(out / "test"), mean=str(mean_file),
                              batch_size=min(recipe.batch_size, n_images), out=str(out / "run"),
                              epochs=epochs or recipe.epochs, checkpoint_every=10, keep_epochs=(),
                              final_train_error=False, final_ten_crop=False, resume=True, plateau_on="train")
    if launch is None:
        model = train.train(run).model
    else:
        launch(run)
        model = checkpoint.load_model(out / "run" / "last.pt", train.resolve_device(run.device))
    data = loader.open_split(out / "test")
    mean = loader.load_mean(mean_file, data.size).to(model.fc8.weight.device)
    batches = ((x, y) for x, y, _ in loader.labelled_batches(data, 256, mean.device))
    probs, labels = evaluate.predict(model, batches, mean, run.crop, "center", run.input_scale)
    chance_err = 100.0 * (1 - 1 / len(images.classes))
    last_epoch = (out / "run" / "metrics.jsonl").read_text().splitlines()[-1]
    train_err = json.loads(last_epoch)["train_top1_err"]
    learned = train_err < 0.5 * chance_err
    if not learned:
        log.warning("non-pretrained %d/class split %d: train error stayed at %.1f%% (chance %.1f%%)",
                    n_train, split_index, train_err, chance_err)
    return run_row(labels.cpu().numpy(), probs.argmax(1).cpu().numpy(), len(images.classes), method="non-pretrained",
                   layer="fc8", classifier="softmax", n_train=n_train, split_index=split_index,
                   n_train_images=n_images, converged=learned)
