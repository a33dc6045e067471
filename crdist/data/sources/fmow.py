"""WILDS FMoW v1.1: ``fmow_v1.1/`` with ``rgb_metadata.csv``, ``country_code_mapping.csv`` and
``images/rgb_img_<i>.png``, where i is the 0-based row of the metadata counting every row.

Region comes from the country code through the mapping (a code missing from it is "Other");
WILDS numbers regions in order of first appearance in the metadata, which is why tasks are named
by region, never by number. Timestamps are ISO-8601 with a trailing Z.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from crdist.data.sources.base import Source, SourceError, SourceSample, fingerprint_files, require_dir, require_file

CATEGORIES = [
    "airport", "airport_hangar", "airport_terminal", "amusement_park", "aquaculture", "archaeological_site", "barn",
    "border_checkpoint", "burial_site", "car_dealership", "construction_site", "crop_field", "dam",
    "debris_or_rubble", "educational_institution", "electric_substation", "factory_or_powerplant", "fire_station",
    "flooded_road", "fountain", "gas_station", "golf_course", "ground_transportation_station", "helipad", "hospital",
    "impoverished_settlement", "interchange", "lake_or_pond", "lighthouse", "military_facility",
    "multi-unit_residential", "nuclear_powerplant", "office_building", "oil_or_gas_facility", "park",
    "parking_lot_or_garage", "place_of_worship", "police_station", "port", "prison", "race_track", "railway_bridge",
    "recreational_facility", "road_bridge", "runway", "shipyard", "shopping_mall", "single-unit_residential",
    "smokestack", "solar_farm", "space_facility", "stadium", "storage_tank", "surface_mine", "swimming_pool",
    "toll_booth", "tower", "tunnel_opening", "waste_disposal", "water_treatment_facility", "wind_farm", "zoo",
]
_GET = "download FMoW v1.1 with the WILDS package (wilds.get_dataset('fmow', download=True)) on a connected machine"


def region_numbering(root: Path) -> list[str]:
    """Region names in WILDS's numbering: order of first appearance in the metadata."""
    base = Path(root) / "fmow_v1.1"
    mapping = _country_regions(base / "country_code_mapping.csv")
    seen: list[str] = []
    for _, _, row in _rows(base / "rgb_metadata.csv"):
        region = mapping.get(row["country_code"], "Other")
        if region not in seen:
            seen.append(region)
    return seen


def load_fmow(root: Path, by: str, year_bounds: list[int]) -> Source:
    """Domain = region (train = WILDS train, test = WILDS id_val) or year bin (train/test = the
    original fMoW train/val rows of those years)."""
    base = require_dir(Path(root) / "fmow_v1.1", _GET)
    metadata = require_file(base / "rgb_metadata.csv", _GET)
    mapping_file = require_file(base / "country_code_mapping.csv", _GET)
    mapping = _country_regions(mapping_file)
    category = {name: i for i, name in enumerate(CATEGORIES)}
    samples = []
    for index, number, row in _rows(metadata):  # index: the data row's 0-based index = the image number
        if row["split"] == "seq":
            continue
        if row["category"] not in category:
            raise SourceError(f"{metadata}: line {number}: unknown category {row['category']!r}")
        year = _year(row["timestamp"], metadata, number)
        region = mapping.get(row["country_code"], "Other")
        if by == "region":
            split = {"train": "train", "val": "test"}.get(row["split"]) if year < 2013 else None
            domain = region
        else:
            split = {"train": "train", "val": "test"}.get(row["split"])
            domain = _year_bin(year, year_bounds)
        if split is None:
            continue
        path = base / "images" / f"rgb_img_{index}.png"
        samples.append(SourceSample(f"rgb-img-{index}", category[row["category"]], split, str(path),
                                    domain=domain, path=path))
    if not samples:
        raise SourceError(f"{metadata}: no train or val rows")
    return Source("fmow", "image", samples, list(CATEGORIES), f"fmow:{fingerprint_files([metadata])}",
                  f"WILDS FMoW v1.1 by {by}", channels=3, index_files=[metadata, mapping_file])


def year_bins(bounds: list[int]) -> list[str]:
    edges = sorted(bounds)
    names = [f"≤{edges[0] - 1}"] + [f"{a}–{b - 1}" for a, b in zip(edges, edges[1:])] + [f"≥{edges[-1]}"]
    return names


def _year_bin(year: int, bounds: list[int]) -> str:
    names, edges = year_bins(bounds), sorted(bounds)
    return names[sum(year >= e for e in edges)]


def _rows(path: Path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"split", "category", "country_code", "timestamp"} - set(reader.fieldnames or [])
        if missing:
            raise SourceError(f"{path}: line 1: missing columns {sorted(missing)}")
        try:
            for index, row in enumerate(reader):
                yield index, reader.line_num, row
        except csv.Error as err:
            raise SourceError(f"{path}: line {reader.line_num}: {err}") from None


def _country_regions(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"alpha-3", "region"} <= set(reader.fieldnames or []):
            raise SourceError(f"{path}: line 1: expected columns 'alpha-3' and 'region'")
        return {row["alpha-3"]: row["region"] for row in reader if row["alpha-3"]}


def _year(timestamp: str, path: Path, number: int) -> int:
    try:
        return datetime.fromisoformat(timestamp.strip().replace("Z", "+00:00")).year
    except ValueError:
        raise SourceError(f"{path}: line {number}: bad timestamp {timestamp!r}") from None
