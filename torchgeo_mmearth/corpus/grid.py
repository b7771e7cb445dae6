"""The pixel grid of one corpus tile: the Sentinel-2 grid around a location."""

import math
from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as transform_coords
from rasterio.warp import transform_bounds

__all__ = ['WGS84', 'TileGrid', 'anchor_lattice']

#: Longitude/latitude in degrees.
WGS84 = CRS.from_epsg(4326)


@dataclass(frozen=True)
class TileGrid:
    """A square, north-up grid of ``size x size`` pixels in a CRS.

    Every modality of a tile is resampled onto this grid. It is cut from the pixel
    lattice of the Sentinel-2 acquisition (its CRS, resolution and pixel
    alignment), so Sentinel-2 bands at the target resolution are copied exactly.

    Args:
        crs: coordinate reference system of the grid.
        transform: affine transform of the top-left corner (pixel edges).
        size: number of pixels along each side.
    """

    crs: CRS
    transform: Affine
    size: int

    @classmethod
    def centred(
        cls, x: float, y: float, crs: CRS, lattice: Affine, size: int
    ) -> 'TileGrid':
        """The ``size x size`` window of *lattice* centred on a point.

        The point falls in pixel ``(size // 2, size // 2)`` of the window, so a
        point on a pixel of the lattice always gives the same window.

        Args:
            x: point easting (or longitude) in *crs*.
            y: point northing (or latitude) in *crs*.
            crs: CRS of the point and of the lattice.
            lattice: transform of a north-up pixel lattice in *crs* (any pixel's
                corner; only the pixel size and alignment matter).
            size: tile side in pixels.

        Returns:
            The tile grid.

        Raises:
            ValueError: if *lattice* is rotated or not north-up.
        """
        if lattice.b != 0 or lattice.d != 0 or lattice.a <= 0 or lattice.e >= 0:
            raise ValueError(
                f'Only north-up rasters are supported; got the transform {lattice!r}'
            )
        col = math.floor((x - lattice.c) / lattice.a) - size // 2
        row = math.floor((y - lattice.f) / lattice.e) - size // 2
        x0, y0 = lattice.c + col * lattice.a, lattice.f + row * lattice.e
        transform = Affine(lattice.a, 0.0, x0, 0.0, lattice.e, y0)
        return cls(crs, transform, size)

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units."""
        return self.transform.a, -self.transform.e

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Bounds (left, bottom, right, top) in the grid CRS."""
        left, top = self.transform.c, self.transform.f
        right = left + self.size * self.transform.a
        bottom = top + self.size * self.transform.e
        return left, bottom, right, top

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the grid in its CRS."""
        left, bottom, right, top = self.bounds
        return (left + right) / 2, (bottom + top) / 2

    def centre_lonlat(self) -> tuple[float, float]:
        """Centre of the grid as (longitude, latitude) in degrees."""
        xs, ys = transform_coords(self.crs, WGS84, [self.centre[0]], [self.centre[1]])
        return float(xs[0]), float(ys[0])

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """Bounds (west, south, east, north) in degrees (densified edges)."""
        west, south, east, north = transform_bounds(
            self.crs, WGS84, *self.bounds, densify_pts=21
        )
        return float(west), float(south), float(east), float(north)

    def padded(self, pixels: int) -> 'TileGrid':
        """The same lattice grown by *pixels* on every side."""
        t = self.transform
        transform = Affine(t.a, 0.0, t.c - pixels * t.a, 0.0, t.e, t.f - pixels * t.e)
        return TileGrid(self.crs, transform, self.size + 2 * pixels)

    def pixel_size_metres(self) -> tuple[float, float]:
        """Pixel size (x, y) in metres, approximated at the centre for degrees."""
        xres, yres = self.res
        if not self.crs.is_geographic:
            factor = float(self.crs.linear_units_factor[1])
            return xres * factor, yres * factor
        _, lat = self.centre_lonlat()
        # Length of one degree on the WGS84 ellipsoid (first terms of the series).
        phi = math.radians(lat)
        metres_lat = 111132.92 - 559.82 * math.cos(2 * phi)
        metres_lon = 111412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi)
        return xres * metres_lon, yres * metres_lat


def anchor_lattice(lattice: Affine, resolution: float | None) -> Affine:
    """The tile lattice of a Sentinel-2 acquisition at a target resolution.

    Keeps the acquisition's pixel alignment (its finest raster's corner) and sets
    the pixel size, so that 10 m bands of a 10 m grid are copied exactly.

    Args:
        lattice: transform of the acquisition's finest raster.
        resolution: target pixel size in CRS units; None keeps the raster's.

    Returns:
        The lattice transform.
    """
    if resolution is None:
        return lattice
    return Affine(resolution, 0.0, lattice.c, 0.0, -resolution, lattice.f)
