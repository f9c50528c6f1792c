"""argparse types shared by the fixture scripts: a bad value is a one-line usage error naming the flag."""

from __future__ import annotations

import argparse


def positive(kind):
    """A number of ``kind`` above 0."""
    def parse(spec: str):
        value = kind(spec)
        if not value > 0:  # NaN compares False: refused too
            raise argparse.ArgumentTypeError(f"must be above 0, got {spec}")
        return value
    return parse


def not_negative(spec: str) -> float:
    """A float of 0 or more (NaN refused)."""
    value = float(spec)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {spec}")
    return value


def crop_size(spec: str) -> int:
    """A crop side in pixels: a positive multiple of 8, the fixture VAE's downsampling factor."""
    size = int(spec)
    if size < 8 or size % 8:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 8 (the VAE downsamples 8x), got {spec}")
    return size
