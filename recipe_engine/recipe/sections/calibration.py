"""The ``calibration:`` section: how amax values are computed."""

from __future__ import annotations

from pydantic import Field

from . import Section
from .quantize import CalibrationMethod


class CalibrationSection(Section):
    """How amax values are computed."""

    method: CalibrationMethod = Field(
        "max",
        title="Method",
        description="Amax search for histogram calibrators: entropy, mse or percentile ('max' uses the "
        "histogram's maximum). Max calibrators always use the absolute maximum.",
    )
    batches: int | None = Field(None, ge=1, title="Batches", description="Calibrate on at most this many batches.")
    percentile: float = Field(99.99, gt=0, le=100, title="Percentile", description="For method: percentile.")
    num_bins: int = Field(2048, ge=16, title="Histogram bins")
    skip_zeros: bool = Field(False, title="Skip zeros", description="Ignore exact zeros in histograms.")
    start_bin: int = Field(128, ge=1, title="Start bin", description="First candidate bin for entropy/mse.")
    stride: int = Field(1, ge=1, title="Stride", description="Candidate bin stride for entropy/mse.")

