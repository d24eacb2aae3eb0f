"""The images of a run nearest to one image: the one definition of "similar images", which both
`nolabel similar` and the report's similar-images panel use.

    found = similar("runs/photos", "/photos/cats/tabby.jpg", k=20)
    for n in found.neighbors:
        print(n.rank, n.similarity, n.cluster, n.path or n.item)

    index = SimilarityIndex(clustering, "train")     # the source's images in the clustering's space
    similarity, rows = index.of_rows([3, 17], k=8)   # (2, 8) each: those images' nearest other images

Nearness is measured in the space the clustering was made in (`nolabel.clustering.clustered_space`:
its PCA, L2-normalised rows for spherical k-means; the extracted features when it has no PCA; TURTLE's
spaces side by side, each L2-normalised), as the
cosine similarity of two images there, searched exactly with faiss (`search_neighbors`). Cosine:
SCAN mines its neighbours with it in this same space, it is the usual measure between
self-supervised features, and for spherical k-means it ranks exactly as the Euclidean distance does.

The image is one of the run's (given by its path, its name in the dataset, or a file name that only
one of them has), whose stored features are used, or any other image file, whose features are made
exactly as the run made its own (`nolabel.predict.extract_like`) and projected the same way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .cluster.neighbors import search_neighbors
from .clustering import Clustering, assign, clustered_features, clustered_space, open_run_clustering
from .data import FileImageDataset, ImageDataset, load, open_image
from .errors import NolabelError


class SimilarityIndex:
    """The images of one source of a clustering, in the space the clustering was made in, searched
    for the most similar by cosine similarity. Raises NolabelError when the source has no stored
    features (whole-network SCAN, or the feature store is gone)."""

    def __init__(self, clustering: Clustering, source: str = "train"):
        space = clustered_features(clustering, source)
        if space is None:
            raise NolabelError(f"{clustering.path}: no stored features for {source!r} (gone, or a clustering "
                               "of the whole network, which keeps none); similar images are searched among them")
        self.clustering, self.space = clustering, space  # space: (N, d) float32

    def of_rows(self, rows: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarity float32 (Q, k'), rows int64 (Q, k')) of the k' = min(k, N - 1) images most
        similar to each of the source's images `rows` (Q,), most similar first, each left out of its
        own list."""
        rows = np.asarray(rows, dtype=np.int64)
        return search_neighbors(self.space, self.space[rows], k, exclude=rows)

    def of_features(self, features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarity float32 (Q, k'), rows int64 (Q, k')) of the k' = min(k, N) images most similar
        to new images given by their backbone features (Q, D) - or a list, one per backbone (TURTLE's:
        several) - taken into the clustering's space first."""
        return search_neighbors(self.space, clustered_space(self.clustering, features), k)


@dataclass(frozen=True)
class Neighbor:
    """One image of the run near the query: its rank (1 the nearest), the cosine similarity of the two
    images in the clustering's space, its row in the run's assignments, its name in the dataset, its
    absolute path (None for array datasets) and its cluster."""

    rank: int
    similarity: float
    row: int
    item: str
    path: str | None
    cluster: int


@dataclass
class SimilarImages:
    """The query (its row in the run, or None for an image the run never saw), the cluster it is in or
    would be assigned to, and its nearest images of the run, the nearest first."""

    query: str
    row: int | None
    cluster: int
    neighbors: list[Neighbor]


def similar(run_dir: str | os.PathLike, image: str | os.PathLike, k: int = 20, *, clustering: str | None = None,
            source: str = "train", weights: str | os.PathLike | None = None, trust_checkpoint: bool = False,
            device: str = "cpu", progress: bool = False) -> SimilarImages:
    """The `k` images of `source` (default the run's train images) most similar to `image` in the space
    of `run_dir`'s chosen clustering (or the one `clustering` names), by `SimilarityIndex`. The query
    itself is left out of its own neighbours. weights: the backbone's weights file, when a new image
    must be extracted and the run's weights are no longer where they were."""
    if k < 1:
        raise NolabelError(f"k must be at least 1, got {k}")
    chosen = open_run_clustering(run_dir, clustering)
    if source not in chosen.assignments:
        raise NolabelError(f"{chosen.path}: no source {source!r}; it has {', '.join(chosen.sources)}")
    index = SimilarityIndex(chosen, source)
    assigned = chosen.assignments[source]
    dataset = load(chosen.dataset(source))
    row = find_image(str(image), assigned.items, dataset)
    if row is not None:
        similarity, found = index.of_rows([row], k)
        cluster = int(assigned.cluster[row])
    else:
        features = [_new_image_features(store, Path(image), run_dir, weights=weights,
                                        trust_checkpoint=trust_checkpoint, device=device, progress=progress)
                    for store in chosen.stores(source)]  # one per backbone (TURTLE's: several)
        similarity, found = index.of_features(features, k)
        cluster = int(assign(chosen, features, device=device)[0][0])
    paths = dataset.paths if isinstance(dataset, FileImageDataset) else None
    position = {name: i for i, name in enumerate(dataset.item_names)} if paths is not None else {}
    neighbors = []
    for rank, (s, r) in enumerate(zip(similarity[0].tolist(), found[0].tolist()), start=1):
        item = assigned.items[r]
        path = os.path.abspath(paths[position[item]]) if item in position else None
        neighbors.append(Neighbor(rank, s, r, item, path, int(assigned.cluster[r])))
    return SimilarImages(str(image), row, cluster, neighbors)


def find_image(image: str, items: list[str], dataset: ImageDataset) -> int | None:
    """The row among `items` (the run's images, named as in `dataset`) of `image`, or None for an image
    file that is not one of them.

    `image` is an existing file (found when it lies in the dataset's folder under an item's name, links
    in the path followed or not), or else an item's name or the file name of exactly one item."""
    position = {name: i for i, name in enumerate(items)}
    if Path(image).is_file():
        if not isinstance(dataset, FileImageDataset):
            return None
        for path, root in ((os.path.abspath(image), os.path.abspath(dataset.root)),
                           (Path(image).resolve(), dataset.root.resolve())):
            try:
                name = Path(path).relative_to(root).as_posix()
            except ValueError:
                continue
            if name in position:
                return position[name]
        return None
    if image in position:
        return position[image]
    named = [i for i, item in enumerate(items) if item.rsplit("/", 1)[-1] == image]
    if len(named) == 1:
        return named[0]
    if named:
        raise NolabelError(f"{image!r} names {len(named)} images of the run ({items[named[0]]}, {items[named[1]]}"
                           f"{', ...' if len(named) > 2 else ''}); give its path in the dataset")
    raise NolabelError(f"{image}: neither an image file nor the name of one of the run's images (such as "
                       f"{items[0]!r})" if items else f"{image}: no such image file")


def _new_image_features(store, image: Path, run_dir, **options) -> np.ndarray:
    """(1, D) features of an image file the run never saw, made as the run made `store`'s."""
    from .predict import extract_like, scratch_features_folder  # torch: only for new images

    open_image(image)  # an unreadable file is the user's error, said now rather than as "no image could be read"
    path = os.path.abspath(image)
    single = FileImageDataset(f"image:{path}", Path(path).parent, [path], np.full(1, -1), [])
    with scratch_features_folder(None) as folder:
        return np.asarray(extract_like(store, single, folder, run_dir=run_dir, **options).features, np.float32)
