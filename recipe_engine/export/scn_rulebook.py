"""Index mappings ("rulebooks") of 3D sparse convolutions, built from integer voxel coordinates.

Written from the definition of the operations (``/work/shared/scn-onnx-format.md``), not from
spconv. Coordinates are int64 ``[N, 4]``: batch, then the three spatial columns in the file's
``format`` order; the kernel axes of a weight ``[O, k0, k1, k2, I]`` follow the same order.

- submanifold (``subm=1``): the output sites are the input sites; output ``o`` reads input
  ``o + (k - K//2) * dilation`` for kernel offset ``k`` (a centred kernel);
- regular sparse conv: output ``o`` reads input ``i = o * stride - padding + k * dilation``
  (a correlation, as a dense conv3d); the output sites are every ``o`` inside
  ``(S + 2p - d(K-1) - 1) // s + 1`` that some input reaches, sorted by (batch, c0, c1, c2);
- inverse conv: the pairs of the forward conv with the same ``rulebook``, read backwards:
  output sites are that conv's input sites, its input must sit at that conv's output sites.

Everything is vectorised over the voxels: sites are linearised to int64 keys and looked up with
``np.searchsorted`` on the sorted keys; the one Python loop is over the K kernel offsets, so the
temporaries are ``[N, 4]``, not ``[K, N, 4]`` (at 336k voxels and K = 27: 10 MiB, not 290 MiB).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..recipe.errors import RecipeError


@dataclass(eq=False)
class Sites:
    """Active voxel sites of one sparse tensor: ``indices`` [N, 4] in a grid of ``shape``."""

    indices: np.ndarray
    shape: tuple[int, int, int]
    batch: int
    _sorted: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def keys(self, coords: np.ndarray) -> np.ndarray:
        """Linear int64 keys of ``coords`` [..., 4] (batch first)."""
        s0, s1, s2 = (int(s) for s in self.shape)
        return ((coords[..., 0] * s0 + coords[..., 1]) * s1 + coords[..., 2]) * s2 + coords[..., 3]

    def lookup(self, coords: np.ndarray) -> np.ndarray:
        """Row of each coordinate in ``indices`` (``-1`` where not active); ``coords`` must lie inside the grid."""
        if self._sorted is None:
            keys = self.keys(self.indices)
            order = np.argsort(keys, kind="stable")
            self._sorted = (keys[order], order)
        sorted_keys, order = self._sorted
        query = self.keys(coords)
        pos = np.searchsorted(sorted_keys, query)
        pos = np.minimum(pos, len(sorted_keys) - 1)
        found = sorted_keys[pos] == query if len(sorted_keys) else np.zeros(query.shape, bool)
        return np.where(found, order[pos] if len(order) else 0, -1)

    def same_as(self, other: Sites) -> bool:
        return self is other or (self.shape == other.shape and np.array_equal(self.indices, other.indices))


def make_sites(indices: np.ndarray, shape: list[int], batch: int) -> Sites:
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 2 or indices.shape[1] != 4:
        raise RecipeError(f"scn runtime: voxel indices must be [N, 4] (batch + 3 spatial), got {list(indices.shape)}")
    shape3 = tuple(int(s) for s in shape)
    if len(indices):
        low, high = indices.min(0), indices.max(0)
        limits = (batch, *shape3)
        if (low < 0).any() or any(int(h) >= lim for h, lim in zip(high, limits, strict=True)):
            raise RecipeError(f"scn runtime: voxel indices span {low.tolist()}..{high.tolist()}, outside batch "
                              f"{batch} x grid {list(shape3)}")
    sites = Sites(indices, shape3, int(batch))
    if len(np.unique(sites.keys(indices))) != len(indices):
        raise RecipeError("scn runtime: the voxel indices contain duplicate sites (libspconv expects unique voxels)")
    return sites


@dataclass
class Rulebook:
    """For each kernel offset ``k`` (flattened k0-major): input rows and output rows paired by it."""

    inputs: Sites
    outputs: Sites
    pairs: list[tuple[np.ndarray, np.ndarray]]  # per offset: (input rows, output rows)
    geometry: tuple

    def inverted(self) -> Rulebook:
        return Rulebook(self.outputs, self.inputs, [(o, i) for i, o in self.pairs], self.geometry)


def _offsets(kernel: list[int]) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(k) for k in kernel], indexing="ij")
    return np.stack([g.reshape(-1) for g in grids], 1).astype(np.int64)  # [K, 3], k0-major like the weight


def submanifold(sites: Sites, kernel: list[int], dilation: list[int]) -> Rulebook:
    offsets = (_offsets(kernel) - np.asarray(kernel) // 2) * np.asarray(dilation)  # [K, 3]
    shape = np.asarray(sites.shape)
    pairs = []
    for offset in offsets:  # one offset at a time: [N, 4] temporaries instead of [K, N, 4]
        spatial = sites.indices[:, 1:] + offset
        inside = np.nonzero(((spatial >= 0) & (spatial < shape)).all(-1))[0]
        rows = sites.lookup(np.concatenate([sites.indices[inside, :1], spatial[inside]], 1))
        found = rows >= 0
        pairs.append((rows[found], inside[found]))
    return Rulebook(sites, sites, pairs, ("subm", tuple(kernel), tuple(dilation)))


def output_shape(shape: tuple[int, ...], kernel: list[int], stride: list[int], padding: list[int],
                 dilation: list[int]) -> tuple[int, int, int]:
    return tuple((int(s) + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, k, st, p, d in zip(shape, kernel, stride, padding, dilation, strict=True))


def strided(sites: Sites, kernel: list[int], stride: list[int], padding: list[int], dilation: list[int]) -> Rulebook:
    out_shape = output_shape(sites.shape, kernel, stride, padding, dilation)
    if min(out_shape) <= 0:
        raise RecipeError(f"scn runtime: a conv with kernel {kernel}, stride {stride}, padding {padding} leaves no "
                          f"output of the grid {list(sites.shape)}")
    offsets = _offsets(kernel) * np.asarray(dilation)  # [K, 3]
    st, limit = np.asarray(stride), np.asarray(out_shape)
    out_sites = Sites(np.zeros((0, 4), np.int64), out_shape, sites.batch)
    reached = []  # per offset: (input rows, keys of the output sites they reach)
    for offset in offsets:  # one offset at a time: [N, 4] temporaries instead of [K, N, 4]
        numer = sites.indices[:, 1:] + np.asarray(padding) - offset  # o * stride
        out = numer // st
        rows = np.nonzero(((numer % st) == 0).all(-1) & (out >= 0).all(-1) & (out < limit).all(-1))[0]
        reached.append((rows, out_sites.keys(np.concatenate([sites.indices[rows, :1], out[rows]], 1))))
    unique_keys = np.unique(np.concatenate([keys for _, keys in reached]))
    s0, s1, s2 = out_shape
    decoded = np.stack([unique_keys // (s0 * s1 * s2), unique_keys // (s1 * s2) % s0, unique_keys // s2 % s1,
                        unique_keys % s2], 1)
    out_sites.indices = decoded.astype(np.int64)
    pairs = [(rows, np.searchsorted(unique_keys, keys)) for rows, keys in reached]
    return Rulebook(sites, out_sites, pairs, ("conv", tuple(kernel), tuple(stride), tuple(padding), tuple(dilation)))


class RulebookCache:
    """The runtime's index mappings of one run: shared by ``rulebook`` key, reused for inverse convs."""

    def __init__(self) -> None:
        self.by_key: dict[str, Rulebook] = {}
        self.by_sites: dict[tuple, Rulebook] = {}

    def forward(self, name: str, sites: Sites, attrs: dict, key: str) -> Rulebook:
        kernel, stride = list(attrs["kernel_size"]), list(attrs.get("stride", [1, 1, 1]))
        padding, dilation = list(attrs.get("padding", [0, 0, 0])), list(attrs.get("dilation", [1, 1, 1]))
        subm = bool(attrs.get("subm", 0))
        geometry = ("subm", tuple(kernel), tuple(dilation)) if subm else \
            ("conv", tuple(kernel), tuple(stride), tuple(padding), tuple(dilation))
        if key and key in self.by_key:
            book = self.by_key[key]
            if book.geometry != geometry or not book.inputs.same_as(sites):
                raise RecipeError(f"scn runtime: {name} shares rulebook {key!r} with a conv of other geometry or "
                                  "other input sites; the runtime would reuse a wrong index mapping")
            return book
        cached = self.by_sites.get((id(sites), geometry))
        book = cached or (submanifold(sites, kernel, dilation) if subm else
                          strided(sites, kernel, stride, padding, dilation))
        self.by_sites[(id(sites), geometry)] = book
        if key:
            self.by_key[key] = book
        return book

    def release(self, key: str) -> None:
        """Forget rulebook ``key`` (no later conv uses it): its pairs are the runtime's largest index arrays."""
        book = self.by_key.pop(key, None)
        self.by_sites = {k: b for k, b in self.by_sites.items() if b is not book}

    def inverse(self, name: str, sites: Sites, attrs: dict, key: str) -> Rulebook:
        book = self.by_key.get(key)
        if book is None:
            raise RecipeError(f"scn runtime: inverse conv {name} uses rulebook {key!r} before any conv made it")
        if book.geometry[0] == "subm":
            raise RecipeError(f"scn runtime: inverse conv {name} reuses the rulebook {key!r} of a submanifold conv")
        if tuple(attrs["kernel_size"]) != book.geometry[1]:
            raise RecipeError(f"scn runtime: inverse conv {name} has kernel {list(attrs['kernel_size'])}, its rulebook "
                              f"{key!r} was made with {list(book.geometry[1])}")
        if not book.outputs.same_as(sites):
            raise RecipeError(f"scn runtime: inverse conv {name} reads sites other than the outputs of the conv that "
                              f"made rulebook {key!r}")
        return book.inverted()
