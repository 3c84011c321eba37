"""Fuzzing the other readers of untrusted files (images, Tiny-ImageNet lists, checkpoints, weights, masks):
random and mutated bytes only ever raise a PrunekitError, within a time limit."""
from __future__ import annotations

import io

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import prunekit as pk
from prunekit.data import testing as fx
from prunekit.data.image_ops import decode_image
from prunekit.data.tiny_imagenet import tiny_imagenet_samples
from prunekit.errors import CheckpointError, DataError, MaskError
from prunekit.train import load_checkpoint
from prunekit.train.checkpoint import load_weights
from tests.reliability import EDITS, Outcomes, fuzz_mutations, fuzz_settings, mutate, record


def _image_bytes(fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = {"PNG": _image_bytes("PNG"), "JPEG": _image_bytes("JPEG")}


def test_image_decoder_mutated_files(tmp_path):
    seen = Outcomes((DataError,))

    @fuzz_settings(150)
    @given(fmt=st.sampled_from(sorted(IMAGES)), edits=EDITS, cut=st.one_of(st.none(), st.integers(0, 700)))
    def check(fmt, edits, cut):
        path = tmp_path / f"x.{fmt.lower()}"
        path.write_bytes(mutate(IMAGES[fmt], edits, cut))
        out = seen(decode_image, path)
        if out is not None:
            assert out.dtype == torch.uint8 and out.shape[0] == 3

    check()
    record("fuzz", "image decoder (ImageNet / Tiny-ImageNet / ImageFolder): 8x8 PNG and JPEG files with up to 6 "
           "bytes overwritten and/or cut short", seen.summary())


def test_tiny_imagenet_lists_random_text(tmp_path):
    base = fx.write_tiny_imagenet(tmp_path, ["n01", "n02"], train_per_class=1, val_per_class=1, size=8)
    seen = Outcomes((DataError,))
    line = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)

    @fuzz_settings(100)
    @given(wnids=st.lists(line, max_size=4), annotations=st.lists(line, max_size=4))
    def check(wnids, annotations):
        (base / "wnids.txt").write_text("\n".join(wnids), encoding="utf-8", errors="surrogatepass")
        (base / "val" / "val_annotations.txt").write_text("\n".join(annotations), encoding="utf-8")
        for train in (True, False):
            seen(tiny_imagenet_samples, tmp_path, train, check_counts=False)

    check()
    record("fuzz", "Tiny-ImageNet `wnids.txt` and `val_annotations.txt`: random text lines", seen.summary())


def _checkpoint_bytes() -> bytes:
    model = pk.models.create("mlp", hidden=[4])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "step": 3, "history": [{"acc": 1.0}]}, buf)
    return buf.getvalue()


VALID_CHECKPOINT = _checkpoint_bytes()


def test_checkpoint_loader_mutated_files(tmp_path):
    seen = Outcomes((CheckpointError,))
    path = tmp_path / "checkpoint.pt"

    def use(mutated):
        path.write_bytes(mutated)
        seen(load_checkpoint, path)

    fuzz_mutations(VALID_CHECKPOINT, 150, use)
    record("fuzz", "training checkpoint loader (`torch.load(weights_only=True)`): a checkpoint with up to 6 bytes "
           "overwritten and/or cut short", seen.summary())


def _mask_bytes(tmp_path) -> bytes:
    model = pk.models.create("mlp", hidden=[4])
    path = tmp_path / "valid.safetensors"
    pk.MaskSet.from_model(model).save(path)
    return path.read_bytes()


def test_mask_and_weight_files_mutated(tmp_path):
    valid = _mask_bytes(tmp_path)
    model = pk.models.create("mlp", hidden=[4])
    seen = Outcomes((CheckpointError, MaskError))
    path = tmp_path / "masks.safetensors"

    def use(mutated):
        path.write_bytes(mutated)
        seen(pk.MaskSet.load, path, model)
        seen(load_weights, path)

    fuzz_mutations(valid, 150, use)
    record("fuzz", "safetensors readers (`MaskSet.load`, cached weights): a mask file with up to 6 bytes "
           "overwritten and/or cut short", seen.summary())
