"""Hostile and damaged data files end in one line naming the file, and never run code."""

import pickle
from pathlib import Path

import pytest

from kdlab.data import DatasetNotFoundError, build_data
from kdlab.data.cifar import load_cifar10
from kdlab.data.errors import DatasetFormatError
from kdlab.data.imagefolder import load_imagefolder
from tests.test_data import png_bytes, rng_images, tree_files, write_cifar10, write_tree
from tests.test_domains import options, write_domain_folders


class MakesAFile:
    """Unpickling this calls ``open(marker, "w")``: what a crafted batch file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("victim", ["data_batch_2", "batches.meta"])
@pytest.mark.parametrize("nested", [False, True])
def test_a_crafted_cifar_batch_runs_no_code(tmp_path: Path, victim: str, nested: bool) -> None:
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    payload = MakesAFile(marker)
    (folder / victim).write_bytes(pickle.dumps({b"data": payload} if nested else payload))
    with pytest.raises(DatasetFormatError, match=rf"{victim}: it references io\.open") as info:
        load_cifar10(tmp_path)
    assert not marker.exists() and "\n" not in str(info.value)


def test_an_unknown_module_in_a_cifar_batch_is_one_line(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"ckdlab_no_such_module\nThing\n)R.")  # GLOBAL, (), REDUCE
    with pytest.raises(DatasetFormatError, match=r"test_batch: it references kdlab_no_such_module\."):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_genuine_cifar_pickles_still_load(tmp_path: Path, protocol: int) -> None:
    folder = write_cifar10(tmp_path)
    data = rng_images(4, 3, 32, 32, 0).reshape(4, -1)
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1, 2, 3]},
                                                       protocol=protocol))
    assert load_cifar10(tmp_path).train.images.shape == (20, 3, 32, 32)


def test_a_zero_byte_image_on_the_decoded_path_names_the_file(tmp_path: Path) -> None:
    files = tree_files()
    files["test/emu/001.png"] = b""  # past the header probe of the first 16 images
    with pytest.raises(DatasetFormatError, match=r"test/emu/001\.png: empty image file"):
        load_imagefolder(write_tree(tmp_path / "tree", files))


def test_a_corrupt_image_in_a_loader_worker_is_the_one_line_naming_it(tmp_path: Path) -> None:
    files = tree_files(size=(72, 72))
    files["test/emu/001.png"] = png_bytes(rng_images(1, 3, 72, 72, 0)[0])[:120]  # the header survives
    root = write_tree(tmp_path / "tree", files)
    bundle = build_data({"name": "imagefolder", "root": root, "batch_size": 4, "val_fraction": 0.0,
                         "num_workers": 1, "device_resident": "off"})
    assert bundle.test.loader is not None
    with pytest.raises(DatasetFormatError) as info:
        list(bundle.test)
    message = str(info.value)
    assert message.startswith(str(root / "test/emu/001.png")) and "\n" not in message


def test_a_domainbed_folder_in_another_case_names_the_near_match(tmp_path: Path) -> None:
    write_domain_folders(tmp_path, "pacs")
    (tmp_path / "PACS").rename(tmp_path / "pacs")
    with pytest.raises(DatasetNotFoundError, match=r"found pacs/: folder names are case-sensitive; rename"):
        build_data({"name": "pacs", "root": tmp_path, "image_size": 8, "options": {"test_domains": ["S"]},
                    **options()})
    (tmp_path / "pacs").rename(tmp_path / "PACS")
    (tmp_path / "PACS" / "photo").rename(tmp_path / "PACS" / "Photo")
    with pytest.raises(DatasetNotFoundError, match=r"'photo' not found .* \(found Photo/"):
        build_data({"name": "pacs", "root": tmp_path, "image_size": 8, "options": {"test_domains": ["S"]},
                    **options()})
