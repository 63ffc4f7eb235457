"""One finished invert -> fit -> synthesize run shared by the pipeline tests; tests change only copies."""

from __future__ import annotations

import pytest

from tests.pipeline.runs import make_spec


@pytest.fixture(scope="package")
def finished(tmp_path_factory, tiny_generator_path, toy_labeled_path):
    """(spec, results) of one full invert -> fit -> synthesize run."""
    from handsoff_ray.pipeline.stages import run_fit, run_invert
    from handsoff_ray.pipeline.synthesize import run_synthesize

    spec = make_spec(tmp_path_factory.mktemp("run") / "runs", tiny_generator_path, toy_labeled_path)
    results = {"invert": run_invert(spec), "fit": run_fit(spec), "synthesize": run_synthesize(spec)}
    return spec, results


@pytest.fixture
def aws_env(monkeypatch):
    """Credentials and region for moto's S3 server (any values work; none is ever sent elsewhere)."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
