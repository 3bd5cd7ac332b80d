"""Shared field types for the schemas: quantities with a declared dimension, and data types."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from sim.config.units import Dim, parse_quantity


def _quantity(dim: Dim) -> BeforeValidator:
    """A number in SI units, or a string with its unit ("3.35 TB/s"): the JSON schema says both."""
    return BeforeValidator(lambda v: parse_quantity(v, dim), json_schema_input_type=float | str)


Bytes = Annotated[float, _quantity(Dim.BYTES), Field(gt=0)]
Size = Annotated[float, _quantity(Dim.BYTES), Field(ge=0)]  # bytes, where none is a meaningful amount
Bandwidth = Annotated[float, _quantity(Dim.BANDWIDTH), Field(gt=0)]
Latency = Annotated[float, _quantity(Dim.TIME), Field(ge=0)]
Frequency = Annotated[float, _quantity(Dim.FREQUENCY), Field(gt=0)]
FlopRate = Annotated[float, _quantity(Dim.COMPUTE), Field(gt=0)]
#: a count of anything (devices, layers, tokens, a batch): at most a billion, far beyond any run that ends
Count = Annotated[int, Field(gt=0, le=10**9, strict=True)]

Dtype = Literal["fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4"]

#: Storage size of one element. tf32 is stored as fp32; int4 packs two values per byte.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0, "tf32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5,
}


class Spec(BaseModel):
    """Frozen, and unknown keys are errors: a typo must never silently become a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)
