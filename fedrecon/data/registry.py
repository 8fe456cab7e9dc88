"""The datasets a scenario can name, and how a plug-in dataset is loaded.

Every loader, built-in or a plug-in named ``package.module:attribute`` in
``data.dataset``, is a callable taking the scenario's ``data`` section
(:class:`fedrecon.scenario.sections.DataConfig`, paths already absolute) and returning
a :class:`fedrecon.data.dataset.ClassDataset`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrecon.plugins import PluginError, load_object

# The keys of ``data`` that only some datasets read.
OPTIONAL_KEYS = ("path", "test_path", "text_column", "label_column", "group_column")


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset the scenario names: its loader (an import path, imported when the data
    is loaded), what its samples are, the optional ``data`` keys it reads and needs, and
    whether it keeps its prepared samples in a node's disk cache (its loader then also
    takes a ``cache``)."""

    load: str
    modality: str
    reads: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    caches: bool = False


DATASETS: dict[str, DatasetEntry] = {
    "omniglot": DatasetEntry("fedrecon.data.omniglot:load", "image", caches=True),
    "clinc150": DatasetEntry("fedrecon.data.text:load_clinc150", "text"),
    "hwu64": DatasetEntry("fedrecon.data.text:load_hwu64", "text"),
    "text": DatasetEntry("fedrecon.data.text:load_text_file", "text", OPTIONAL_KEYS, ("path", "text_column", "label_column")),
    "image_folder": DatasetEntry("fedrecon.data.images:load_image_folder", "image", ("path", "test_path"), ("path",)),
}


def dataset_entry(name: str) -> DatasetEntry:
    """The entry of a built-in name; a plug-in reads any key and has the modality its
    samples show (:attr:`ClassDataset.modality`)."""
    if name in DATASETS:
        return DATASETS[name]
    if ":" not in name:
        raise PluginError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}, or package.module:attribute")
    return DatasetEntry(name, "", OPTIONAL_KEYS)


def load_dataset(data, cache=None):
    """The dataset the ``data`` section names (a :class:`ClassDataset`); ``cache`` (a
    :class:`fedrecon.data.cache.DiskCache`) keeps what a loader that caches prepares.

    Raises :class:`fedrecon.data.dataset.DataError` for a missing or malformed file,
    :class:`PluginError` for a plug-in that cannot be imported or returns something else.
    """
    from fedrecon.data.dataset import ClassDataset

    entry = dataset_entry(data.dataset)
    loader = load_object(entry.load)
    dataset = loader(data, cache) if entry.caches else loader(data)
    if not isinstance(dataset, ClassDataset):
        raise PluginError(f"{data.dataset} returned a {type(dataset).__name__}, not a fedrecon.data.dataset.ClassDataset")
    return dataset
