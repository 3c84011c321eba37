"""Writers for small files in the original dataset formats, for tests (yours and ours).

Nothing here downloads anything: these produce IDX files, Python-2-style CIFAR pickles and archives,
and Tiny-ImageNet / ImageFolder trees with the exact layout of the official distributions.
"""
from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
from pathlib import Path

import numpy as np

from .cifar import CIFAR_LAYOUTS
from .idx import IMAGES_MAGIC, LABELS_MAGIC, MNIST_FILES


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array (magic 0x8 <ndim>, big-endian dims, payload)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape) + a.tobytes()


def write_mnist(root: str | os.PathLike, images: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                *, compress: bool = True) -> Path:
    """Write ``{"train"|"test": N×28×28 uint8}`` images and labels with the standard MNIST file names."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split in images:
        for kind, arr in (("images", images[split]), ("labels", labels[split])):
            data = idx_bytes(arr)
            assert int.from_bytes(data[:4], "big") == (IMAGES_MAGIC if kind == "images" else LABELS_MAGIC)
            name = MNIST_FILES[(split, kind)]
            if compress:
                (root / (name + ".gz")).write_bytes(gzip.compress(data, mtime=0))
            else:
                (root / name).write_bytes(data)
    return root


# --- Python-2 protocol-2 pickles, as cPickle wrote the official CIFAR batches -----------------------

def _py2_str(b: bytes) -> bytes:
    # SHORT_BINSTRING / BINSTRING: a Python-2 ``str`` (unpickled as bytes with encoding="bytes")
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _py2_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return b"J" + struct.pack("<i", v)


def _py2_ndarray(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    code = {np.dtype(np.uint8): b"u1", np.dtype(np.int64): b"i8", np.dtype(np.int32): b"i4"}[a.dtype]
    order = b"|" if a.dtype.itemsize == 1 else b"<"
    dtype = (b"cnumpy\ndtype\n" + _py2_str(code) + b"K\x00K\x01\x87R"
             + b"(K\x03" + _py2_str(order) + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    shape = b"(" + b"".join(_py2_int(d) for d in a.shape) + b"t"
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85" + _py2_str(b"b")
            + b"\x87R" + b"(K\x01" + shape + dtype + b"\x89" + _py2_str(a.tobytes()) + b"tb")


def _py2_obj(obj: object) -> bytes:
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return _py2_int(obj)
    if isinstance(obj, (bytes, str)):
        return _py2_str(obj.encode("latin1") if isinstance(obj, str) else obj)
    if isinstance(obj, np.ndarray):
        return _py2_ndarray(obj)
    if isinstance(obj, list):
        return b"](" + b"".join(_py2_obj(v) for v in obj) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2_obj(k) + _py2_obj(v) for k, v in obj.items()) + b"u"
    raise TypeError(f"cannot encode {type(obj).__name__}")


def py2_pickle(obj: object) -> bytes:
    """Protocol-2 pickle of dicts/lists/ints/str/uint8 arrays the way Python 2's cPickle wrote them."""
    return b"\x80\x02" + _py2_obj(obj) + b"."


def cifar_batch_bytes(images: np.ndarray, labels: np.ndarray, *, variant: str = "cifar10",
                      batch_label: str = "training batch 1 of 5") -> bytes:
    """One CIFAR batch file: ``images`` uint8 N×3×32×32 (or N×3072) and integer labels."""
    data = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), 3072)
    labels = [int(v) for v in labels]
    if variant == "cifar10":
        d = {"batch_label": batch_label, "labels": labels, "data": data,
             "filenames": [f"img_{i}.png" for i in range(len(labels))]}
    else:
        d = {"filenames": [f"img_{i}.png" for i in range(len(labels))], "batch_label": batch_label,
             "fine_labels": labels, "coarse_labels": [v // 5 for v in labels], "data": data}
    return py2_pickle(d)


def write_cifar(root: str | os.PathLike, variant: str, train: tuple[np.ndarray, np.ndarray],
                test: tuple[np.ndarray, np.ndarray], *, archive: bool = True) -> Path:
    """A CIFAR-10/100 distribution in ``root``: the ``.tar.gz`` (``archive=True``) or the extracted folder.

    CIFAR-10 training data is split over ``data_batch_1..5`` (N must be divisible by 5).
    Returns the path written (archive file or folder).
    """
    layout = CIFAR_LAYOUTS[variant]
    files: dict[str, bytes] = {}
    if variant == "cifar10":
        imgs, lbls = train
        k = len(imgs) // 5
        for i in range(5):
            files[f"data_batch_{i + 1}"] = cifar_batch_bytes(imgs[i * k:(i + 1) * k], lbls[i * k:(i + 1) * k],
                                                             batch_label=f"training batch {i + 1} of 5")
        files["test_batch"] = cifar_batch_bytes(*test, batch_label="testing batch 1 of 1")
        files["batches.meta"] = py2_pickle({"num_cases_per_batch": k, "label_names": [str(i) for i in range(10)],
                                            "num_vis": 3072})
    else:
        files["train"] = cifar_batch_bytes(*train, variant=variant, batch_label="training batch 1 of 1")
        files["test"] = cifar_batch_bytes(*test, variant=variant, batch_label="testing batch 1 of 1")
        files["meta"] = py2_pickle({"fine_label_names": [str(i) for i in range(100)],
                                    "coarse_label_names": [str(i) for i in range(20)]})
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not archive:
        folder = root / layout.folder
        folder.mkdir(exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return folder
    path = root / layout.archive
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{layout.folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --- JPEG trees --------------------------------------------------------------------------------------

def _save_jpeg(path: Path, image: np.ndarray) -> None:
    from PIL import Image  # deferred: Pillow, needed only by the JPEG fixtures

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.ascontiguousarray(image.transpose(1, 2, 0)) if image.ndim == 3 else image
    mode = "L" if arr.ndim == 2 or arr.shape[2] == 1 else "RGB"
    Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and mode == "L" else arr, mode=mode).save(path, quality=95)


def write_tiny_imagenet(root: str | os.PathLike, wnids: list[str], train_per_class: int, val_per_class: int,
                        *, size: int = 64, seed: int = 0, grayscale_every: int = 0) -> Path:
    """A ``tiny-imagenet-200``-layout tree (train/<wnid>/images, val/images + val_annotations.txt).

    Images are flat colours that identify their class (so decoded pixels can be checked);
    every ``grayscale_every``-th training image is saved as 1-channel JPEG, as some originals are.
    """
    rng = np.random.default_rng(seed)
    base = Path(root) / "tiny-imagenet-200"
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tclass {w}\n" for w in wnids))
    colours = {w: rng.integers(0, 256, size=3, dtype=np.uint8) for w in wnids}
    n = 0
    for w in wnids:
        boxes = []
        for i in range(train_per_class):
            img = np.broadcast_to(colours[w][:, None, None], (3, size, size)).copy()
            if grayscale_every and n % grayscale_every == 0:
                img = img[:1]
            _save_jpeg(base / "train" / w / "images" / f"{w}_{i}.JPEG", img)
            boxes.append(f"{w}_{i}.JPEG\t0\t0\t{size - 1}\t{size - 1}\n")
            n += 1
        (base / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))
    lines = []
    k = 0
    for j in range(val_per_class):
        for w in wnids:
            img = np.broadcast_to(colours[w][:, None, None], (3, size, size)).copy()
            _save_jpeg(base / "val" / "images" / f"val_{k}.JPEG", img)
            lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t{size - 1}\t{size - 1}\n")
            k += 1
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    return base


def write_image_folder(root: str | os.PathLike, classes: list[str], per_class: int, *,
                       sizes: list[tuple[int, int]] | None = None, seed: int = 0) -> Path:
    """An ImageFolder tree ``root/<class>/<i>.JPEG`` with flat-colour images of varying sizes."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    sizes = sizes or [(48, 40), (40, 56), (64, 64)]
    for c in classes:
        colour = rng.integers(0, 256, size=3, dtype=np.uint8)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            _save_jpeg(root / c / f"{c}_{i}.JPEG", np.broadcast_to(colour[:, None, None], (3, h, w)).copy())
    return root
