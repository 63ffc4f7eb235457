"""Spec discovery: `handsoff spec schema`, `handsoff spec defaults`, and the nearest key in unknown-key errors."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from handsoff_ray.cli import main
from handsoff_ray.config import JobSpec, SpecError, parse_spec

JOBS = Path(__file__).parents[1] / "jobs"


def test_shipped_schema_is_the_models_and_accepts_every_example_spec():
    res = CliRunner().invoke(main, ["spec", "schema"])
    assert res.exit_code == 0, res.output
    schema = json.loads(res.output)
    assert json.loads((JOBS / "spec.schema.json").read_text()) == schema, \
        "jobs/spec.schema.json is stale: handsoff spec schema > jobs/spec.schema.json"
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((JOBS / "specs").glob("*.yaml")):
        assert path.read_text().startswith("# yaml-language-server: $schema=../spec.schema.json"), path
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == [], path
    errors = [e.message for e in validator.iter_errors({"inversion": {"stepz": 3}})]
    assert errors == ["Additional properties are not allowed ('stepz' was unexpected)"]


def test_defaults_list_every_field_and_load_back_as_the_default_spec():
    res = CliRunner().invoke(main, ["spec", "defaults"])
    assert res.exit_code == 0, res.output
    assert JobSpec.model_validate(yaml.safe_load(res.output)) == JobSpec()
    assert "  seeds: null  # format toy: the toy faces' seeds" in res.output
    assert "  device: auto  # Compute device; auto = cuda when available; one of auto, cpu, cuda" in res.output
    assert "  steps: 500  # Optimisation steps per image (reference: 500); >= 1; <= 100000" in res.output
    assert "reader:  # Read-time policy recorded as the readers' defaults\n" in res.output


def spec_models(model: type[BaseModel] = JobSpec) -> list[type[BaseModel]]:
    """JobSpec and every pydantic model reachable through its fields (inside Optional, list, ... too)."""
    found, todo = [], [model]
    while todo:
        m = todo.pop()
        if m in found:
            continue
        found.append(m)
        for field in m.model_fields.values():
            stack = [field.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    todo.append(t)
                stack += typing.get_args(t)
    return found


def test_every_spec_field_has_a_description():
    models = spec_models()
    assert {"JobSpec", "LPIPSSpec", "SegmentationTask", "S3Spec"} <= {m.__name__ for m in models}
    missing = [f"{m.__name__}.{name}" for m in models for name, f in m.model_fields.items()
               if not (f.description or "").strip()]
    assert missing == [], f"spec fields without Field(description=...): {missing}"
    # ... and the JSON Schema editors read carries each one
    schema = json.loads((JOBS / "spec.schema.json").read_text())
    undocumented = [f"{where}.{name}" for where, d in [("JobSpec", schema), *schema["$defs"].items()]
                    for name, prop in d.get("properties", {}).items() if not prop.get("description")]
    assert undocumented == []


@pytest.mark.parametrize("data, message", [
    ({"inversion": {"stepz": 3}}, "inversion.stepz: unknown key; did you mean `inversion.steps`?"),
    ({"label_generator": {"tasks": {"segmentaton": {}}}},
     "label_generator.tasks.segmentaton: unknown key; did you mean `label_generator.tasks.segmentation`?"),
    ({"zzz": 1}, "zzz: unknown key (`handsoff spec defaults` lists every key)"),
])
def test_unknown_key_names_the_nearest_key(data, message):
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert message in str(err.value)
