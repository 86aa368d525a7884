"""2D/3D augmentation: one spatial transform for image and target, then intensity changes.

Flips, 90-degree rotations, a small rotation and scaling, and an elastic deformation are folded
into a single coordinate map, so each patch is resampled once (linear for the image, nearest
for the target, which keeps the ignore label intact).  The patch is cut from a region with a
margin around it, so rotated corners see real image rather than padding.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage as ndi

__all__ = ["Augmenter", "Draw", "margin_for", "is_axis_permutation", "noise_seed"]


def margin_for(patch: tuple[int, ...]) -> tuple[int, ...]:
    """Context read around a patch so that rotation and scaling stay inside real data."""
    return tuple(int(math.ceil(0.25 * p)) for p in patch)


def _rotation(nd: int, rng: np.random.Generator, max_angle: float, in_plane: bool) -> np.ndarray:
    def rot(a: float, i: int, j: int) -> np.ndarray:
        m = np.eye(nd)
        m[i, i] = m[j, j] = math.cos(a)
        m[i, j], m[j, i] = -math.sin(a), math.sin(a)
        return m

    if nd == 2:
        return rot(rng.uniform(-max_angle, max_angle), 0, 1)
    m = rot(rng.uniform(-max_angle, max_angle), 1, 2)  # about z: in the YX plane
    if not in_plane:
        m = m @ rot(rng.uniform(-max_angle, max_angle), 0, 2) @ rot(
            rng.uniform(-max_angle, max_angle), 0, 1)
    return m


def _interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of linear interpolation from ``n_in`` control points spread
    over ``n_out`` samples (end points aligned)."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def is_axis_permutation(m: np.ndarray) -> bool:
    """``m`` only flips and permutes axes (no resampling needed)."""
    a = np.abs(m)
    return bool(np.allclose(a.sum(axis=0), 1) and np.allclose(a, np.round(a)))


def noise_seed(rng: np.random.Generator) -> int:
    """A seed for the training device's noise generator (:mod:`.augment_device`), drawn after
    all of a patch's other choices."""
    return int(rng.integers(0, 2**62))


@dataclasses.dataclass
class Draw:
    """The random choices of one augmented patch: everything but its pixels.

    ``matrix`` maps output to input coordinates (flips, 90-degree turns, rotation, scale);
    ``fields`` are the coarse elastic displacements per axis (None: no elastic deformation;
    an axis entry None: none along that axis); the intensity changes are None where not drawn.
    """

    matrix: np.ndarray
    fields: list[np.ndarray | None] | None = None
    gamma: float | None = None
    contrast: float | None = None
    brightness: float | None = None
    blur: float | None = None
    noise: float | None = None
    noise_seed: int = 0  # the device's generator for the noise (augment_batch)


@dataclasses.dataclass
class Augmenter:
    """Random augmentation of (image, target) patches.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    anisotropic : bool
        3D: 90-degree and small rotations only in the YX plane.
    p_rotate, p_scale, p_elastic : float
        Probabilities of a small rotation, a scaling and an elastic deformation.
    max_angle : float
        Largest small rotation, in degrees.
    scale : (float, float)
        Range of the zoom factor.
    p_gamma, p_contrast, p_brightness, p_noise, p_blur : float
        Probabilities of each intensity change.
    """

    spatial_dims: int
    anisotropic: bool = False
    p_rotate: float = 0.3
    p_scale: float = 0.3
    p_elastic: float = 0.2
    max_angle: float = 20.0
    scale: tuple[float, float] = (0.85, 1.2)
    elastic_alpha: float = 3.0
    p_gamma: float = 0.3
    p_contrast: float = 0.3
    p_brightness: float = 0.3
    p_noise: float = 0.2
    p_blur: float = 0.15

    def spatial_matrix(self, rng: np.random.Generator, patch: tuple[int, ...]) -> np.ndarray:
        """Output -> input coordinate matrix: flips, 90-degree turns, rotation, scale.

        90-degree turns only mix axes of equal patch size, so they never need padding.
        """
        nd = self.spatial_dims
        m = np.diag(rng.choice([-1.0, 1.0], size=nd))  # flips
        planes = [(nd - 2, nd - 1)] if (nd == 2 or self.anisotropic) else [(0, 1), (0, 2),
                                                                           (1, 2)]
        planes = [(i, j) for i, j in planes if patch[i] == patch[j]]
        for i, j in planes:
            for _ in range(int(rng.integers(0, 4))):
                q = np.eye(nd)
                q[i, i] = q[j, j] = 0.0
                q[i, j], q[j, i] = -1.0, 1.0
                m = m @ q
        if rng.random() < self.p_rotate:
            m = m @ _rotation(nd, rng, math.radians(self.max_angle), self.anisotropic or nd == 2)
        if rng.random() < self.p_scale:
            s = rng.uniform(*self.scale)
            zoom = np.full(nd, s)
            if self.anisotropic and nd == 3:
                zoom[0] = 1.0  # keep the z sampling of thin stacks
            m = m @ np.diag(zoom)
        return m

    def draw(self, rng: np.random.Generator, patch: tuple[int, ...]) -> Draw:
        """The random choices of one augmented patch, in a fixed order (so that a seed gives
        the same patch whether it is then made here or on the training device)."""
        nd = self.spatial_dims
        m = self.spatial_matrix(rng, tuple(patch))
        fields = None
        if rng.random() < self.p_elastic:
            # Smooth random displacement: a coarse random grid, upsampled when applied.
            coarse = [max(2, p // 32) for p in patch]
            fields = [None if (self.anisotropic and nd == 3 and d == 0)
                      else rng.normal(0.0, self.elastic_alpha, size=coarse) for d in range(nd)]
        d = Draw(m, fields)
        if rng.random() < self.p_gamma:
            d.gamma = math.exp(rng.uniform(math.log(0.7), math.log(1.5)))
        if rng.random() < self.p_contrast:
            d.contrast = rng.uniform(0.75, 1.25)
        if rng.random() < self.p_brightness:
            d.brightness = rng.uniform(-0.1, 0.1)
        if rng.random() < self.p_blur:
            d.blur = rng.uniform(0.5, 1.0)
        if rng.random() < self.p_noise:
            d.noise = rng.uniform(0.0, 0.08)
        return d

    def __call__(
        self,
        image: np.ndarray,
        target: np.ndarray,
        patch: tuple[int, ...],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cut an augmented ``patch`` from the centre of ``image`` (C, ...) / ``target`` (...)."""
        d = self.draw(rng, patch)
        image, target = self._spatial(image, target, patch, d)
        return self._intensity(image, d, rng), target

    def _spatial(self, image, target, patch, d: Draw):
        nd = self.spatial_dims
        region = np.asarray(target.shape, dtype=np.float64)
        m = d.matrix
        if d.fields is None and is_axis_permutation(m):
            return self._exact(image, target, patch, m)
        grid = np.stack(np.meshgrid(*[np.arange(p, dtype=np.float64) - (p - 1) / 2.0
                                      for p in patch], indexing="ij"))
        # einsum, not tensordot / @: numpy's BLAS would run these products in its own
        # threads, which keep spinning after the call and were measured to slow the model's
        # next forward pass by ~40% (3D, 2 cores); the plain loops of einsum are as fast here.
        coords = np.einsum("ij,j...->i...", m, grid)
        if d.fields is not None:
            # Separable linear interpolation of the coarse grid: products with small
            # matrices, 40x faster than a cubic ndi.zoom in 3D.
            up = [_interpolation_matrix(c, p)
                  for c, p in zip(next(f for f in d.fields if f is not None).shape, patch,
                                  strict=True)]
            for axis_d, field in enumerate(d.fields):
                if field is None:
                    continue
                for axis, w in enumerate(up):
                    field = np.moveaxis(
                        np.einsum("pc,c...->p...", w, np.moveaxis(field, axis, 0)), 0, axis)
                coords[axis_d] += field
        coords += ((region - 1) / 2.0).reshape((nd,) + (1,) * nd)
        x = np.stack([ndi.map_coordinates(c, coords, order=1, mode="reflect") for c in image])
        t = ndi.map_coordinates(target, coords, order=0, mode="reflect")
        return x.astype(np.float32, copy=False), t

    @staticmethod
    def _exact(image, target, patch, m):
        """Flips and 90-degree turns without resampling (bit-exact, and fast)."""
        nd = len(patch)
        # Which input axis feeds each output axis, and with which sign.
        src_axis = [int(np.argmax(np.abs(m[:, j]))) for j in range(nd)]
        sign = [m[src_axis[j], j] for j in range(nd)]
        in_patch = [0] * nd
        for j, a in enumerate(src_axis):
            in_patch[a] = patch[j]
        start = [(s - p) // 2 for s, p in zip(target.shape, in_patch, strict=True)]
        sl = tuple(slice(a, a + p) for a, p in zip(start, in_patch, strict=True))
        t = target[sl]
        x = image[(slice(None), *sl)]
        t = np.transpose(t, src_axis)
        x = np.transpose(x, [0] + [a + 1 for a in src_axis])
        flip = [j for j in range(nd) if sign[j] < 0]
        if flip:
            t = np.flip(t, axis=flip)
            x = np.flip(x, axis=[j + 1 for j in flip])
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(t)

    @staticmethod
    def _intensity(x: np.ndarray, d: Draw, rng: np.random.Generator) -> np.ndarray:
        if d.gamma is not None:
            lo, hi = float(x.min()), float(x.max())
            if hi > lo:
                x = ((x - lo) / (hi - lo)) ** d.gamma * (hi - lo) + lo
        if d.contrast is not None:
            mean = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True)
            x = (x - mean) * d.contrast + mean
        if d.brightness is not None:
            x = x + d.brightness
        if d.blur is not None:
            x = ndi.gaussian_filter(x, sigma=[0.0] + [d.blur] * (x.ndim - 1))
        if d.noise is not None:
            x = x + rng.normal(0.0, d.noise, size=x.shape)
        return x.astype(np.float32, copy=False)
