"""What every section of the configuration shares: unknown keys are refused, and a value set
after loading is validated as one read from the file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
