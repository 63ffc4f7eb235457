"""The job spec: defaults that run, dotted-path errors, ranges, hashing."""

from pathlib import Path

import pytest

from handsoff_ray.config import JobSpec, SpecError, load_spec, parse_spec, spec_hash, stage_hash


class TestParse:
    def test_empty_spec_gets_laptop_defaults(self):
        spec = parse_spec({})
        assert spec.inversion.steps == 500 and spec.inversion.lpips_weight == 10.0
        assert spec.label_generator.ensemble_size == 10
        assert spec.label_generator.tasks.segmentation.hidden == (256, 32)
        assert spec.synthesis.truncation_psi == 0.7
        assert spec.run_id == "handsoff"

    def test_unknown_key_is_named_by_dotted_path(self):
        with pytest.raises(SpecError, match=r"inversion\.stepz: unknown key"):
            parse_spec({"inversion": {"stepz": 3}})

    def test_unknown_nested_key(self):
        with pytest.raises(SpecError, match=r"label_generator\.tasks\.segmentation\.widths: unknown key"):
            parse_spec({"label_generator": {"tasks": {"segmentation": {"widths": [1, 2]}}}})

    def test_all_problems_reported_together(self):
        with pytest.raises(SpecError) as info:
            parse_spec({"inversion": {"steps": 0}, "synthesis": {"batch_size": -1}, "bogus": 1})
        lines = str(info.value).splitlines()
        assert len(lines) == 3
        assert any("inversion.steps" in line and "greater than or equal to 1" in line for line in lines)
        assert any(line.startswith("<spec>: bogus: unknown key") for line in lines)

    @pytest.mark.parametrize(
        "field,value",
        [
            (("synthesis", "truncation_psi"), -0.1),
            (("label_generator", "ensemble_size"), 0),
            (("label_generator", "val_fraction"), 1.0),
            (("generator", "device"), "tpu"),
            (("storage", "run_id"), "Bad Name!"),
        ],
    )
    def test_out_of_range_values_rejected(self, field, value):
        section, key = field
        with pytest.raises(SpecError, match=rf"{section}\.{key}"):
            parse_spec({section: {key: value}})

    def test_no_task_enabled_is_an_error(self):
        tasks = {t: {"enabled": False} for t in ("segmentation", "keypoints", "depth")}
        with pytest.raises(SpecError, match="enable at least one"):
            parse_spec({"label_generator": {"tasks": tasks}})

    def test_evaluation_needs_test_path(self):
        with pytest.raises(SpecError, match="test_path is required"):
            parse_spec({"evaluation": {"enabled": True}})

    def test_top_level_must_be_mapping(self):
        with pytest.raises(SpecError, match="must be a YAML mapping"):
            parse_spec([1, 2])  # type: ignore[arg-type]


class TestLoad:
    def test_load_yaml_with_overrides(self, tmp_path):
        p = tmp_path / "s.yaml"
        p.write_text("name: faces\ninversion:\n  steps: 100\n")
        spec = load_spec(p, overrides={"inversion.steps": 7, "synthesis.num_samples": 42})
        assert spec.name == "faces" and spec.inversion.steps == 7 and spec.synthesis.num_samples == 42

    def test_missing_file(self, tmp_path):
        with pytest.raises(SpecError, match="no such spec file"):
            load_spec(tmp_path / "nope.yaml")

    def test_invalid_yaml_is_one_line(self, tmp_path):
        p = tmp_path / "s.yaml"
        p.write_text("a: [1, 2\n")
        with pytest.raises(SpecError, match="not valid YAML") as info:
            load_spec(p)
        assert "\n" not in str(info.value)

    def test_shipped_example_specs_are_valid(self):
        from pathlib import Path

        specs = sorted((Path(__file__).parents[1] / "jobs" / "specs").glob("*.yaml"))
        assert specs, "jobs/specs/ must hold example specs"
        for p in specs:
            load_spec(p)


class TestHash:
    def test_resources_do_not_change_the_hash(self):
        a = parse_spec({})
        b = parse_spec({"resources": {"num_workers": 8, "use_gpu": True}, "storage": {"output": "s3://b/x"}})
        assert spec_hash(a) == spec_hash(b)

    def test_what_is_computed_changes_the_hash(self):
        assert spec_hash(parse_spec({})) != spec_hash(parse_spec({"seed": 1}))

    def test_stage_hashes_are_those_of_earlier_versions(self):
        """Pinned: a changed hash refuses every existing run's outputs ("holds output of another spec") and
        changes every shard's bytes (the spec_hash column). Values from before reader.* left synthesis.
        Content identities (next test) add what a stage reads to these and leave them as they were."""
        toy = load_spec(Path(__file__).parents[1] / "jobs/specs/toy.yaml")
        for spec, expected in ((parse_spec({}), ["41a7d2b5b7e3215e", "8978c2102fba79b4", "c0e70f9ec7c45ba4"]),
                               (toy, ["b82f1e9b5f9dacfb", "112098439e467547", "cc7b753d7f9ac0d2"])):
            assert [stage_hash(spec, s) for s in ("invert", "fit", "synthesize")] == expected
        assert spec_hash(parse_spec({})) == "20113b07732b3640"

    def test_content_identities_of_the_toy_spec_are_pinned(self):
        """Pinned: a stage's identity (pipeline/identity.py) is its stage hash above plus the content it reads
        (here: the toy faces' renderer version and seeds, the shipped toy checkpoint's sha256) and the
        identities before it. A changed value recomputes every existing run's invert, fit and synthesis
        outputs once (their bytes stay the same when the stage hashes above do). New with content identities."""
        from handsoff_ray.pipeline.digests import file_digest, labeled_digests
        from handsoff_ray.pipeline.identity import Identities
        from handsoff_ray.pipeline.context import resolve_checkpoint

        toy = load_spec(Path(__file__).parents[1] / "jobs/specs/toy.yaml")
        checkpoint = file_digest(resolve_checkpoint(toy.generator.checkpoint))
        assert checkpoint == "39ce8695a60e244032aa5655a009f6065b97e5a05976f89a5040ee5d2f054532"  # the shipped toy GAN
        ids = Identities.of(toy, checkpoint, labeled_digests(toy))
        assert [ids.invert[:16], ids.fit[:16], ids.synthesize[:16]] == \
            ["1bea4a6848b50f05", "3ce52ccf269bd3df", "39c8ed00b88a2dcc"]

    def test_synthesis_version_is_in_no_stage_hash(self):
        """A dataset's versions (scheduled batches) belong to one spec: the version changes no stage hash, so
        no row's spec_hash, and the full spec hash only when set."""
        a, b = parse_spec({}), parse_spec({"synthesis": {"version": 29_000_000}})
        assert [stage_hash(a, s) for s in ("invert", "fit", "synthesize", "evaluate")] == \
            [stage_hash(b, s) for s in ("invert", "fit", "synthesize", "evaluate")]
        assert spec_hash(a) == "20113b07732b3640" != spec_hash(b)

    def test_section_hash_ignores_other_sections(self):
        a, b = parse_spec({}), parse_spec({"synthesis": {"num_samples": 5}})
        keys = ("generator", "data", "inversion", "seed")
        assert spec_hash(a, sections=keys) == spec_hash(b, sections=keys)
        assert spec_hash(a) != spec_hash(b)

    def test_defaults_model_is_frozen_shape(self):
        assert set(JobSpec.model_fields) == {
            "name", "seed", "generator", "data", "inversion", "label_generator",
            "synthesis", "reader", "storage", "evaluation", "resources", "suggest", "gan",
        }

    def test_gan_changes_no_hash(self):
        """Training a generator changes no HandsOff stage: a run sees it through generator.checkpoint's bytes."""
        a, b = parse_spec({}), parse_spec({"gan": {"kimg": 3, "augment": "diffaugment",
                                                   "data": {"format": "toy", "seeds": "5-9"}}})
        assert spec_hash(a) == spec_hash(b) == "20113b07732b3640"
        assert [stage_hash(a, s) for s in ("invert", "fit", "synthesize", "evaluate")] == \
            [stage_hash(b, s) for s in ("invert", "fit", "synthesize", "evaluate")]

    def test_suggest_changes_no_hash(self):
        """Choosing images to label computes nothing of a run: no stage hash, no spec hash moves."""
        a, b = parse_spec({}), parse_spec({"suggest": {"budget": 3, "pool": {"format": "toy", "seeds": "5-9"}}})
        assert spec_hash(a) == spec_hash(b) == "20113b07732b3640"
        assert [stage_hash(a, s) for s in ("invert", "fit", "synthesize", "evaluate")] == \
            [stage_hash(b, s) for s in ("invert", "fit", "synthesize", "evaluate")]
