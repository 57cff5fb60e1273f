"""The config system: merging components, strict overrides, types, lists, required values, YAML."""

from dataclasses import dataclass

import pytest
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from theseus import config as C
from theseus.errors import ConfigError, UserError


@dataclass
class Model:
    n_layers: int = C.field("architecture/n_layers", default=12, help="transformer blocks")
    d_model: int = C.field("architecture/d_model", default=768, help="width")
    block_size: int = C.field("architecture/block_size", default=1024, help="context length")


@dataclass
class Data:
    block_size: int = C.field("architecture/block_size", default=1024, help="context length")
    name: str = C.field("data/name", help="dataset source")
    rates: list[float] = C.field("data/rates", default_factory=lambda: [1.0], help="weights")


@dataclass
class Other:
    block_size: int = C.field("architecture/block_size", default=512)


@dataclass
class Entry:
    name: str = "x"
    rate: float = 1.0


@dataclass
class Mixture:
    dataset: list[Entry] = C.field("training/dataset", default_factory=lambda: [Entry()])
    doubled: int = C.field("training/doubled", default="${architecture.block_size}")


def schema() -> C.Schema:
    return C.Schema(Model, Data, Mixture)


def test_components_merge_into_one_tree_sharing_equal_keys():
    cfg = C.build(Model, Data)
    assert cfg.architecture.n_layers == 12
    assert cfg.architecture.block_size == 1024
    assert OmegaConf.is_missing(cfg.data, "name")
    assert sorted(C.Schema(Model, Data).entries["architecture.block_size"].owners)[0].endswith(
        "Data"
    )


def test_conflicting_defaults_name_both_components():
    with pytest.raises(ConfigError) as err:
        C.build(Model, Other)
    message = str(err.value)
    assert "architecture.block_size" in message
    assert "Model" in message and "Other" in message and "1024" in message and "512" in message


def test_value_and_section_clash_is_an_error():
    @dataclass
    class Clash:
        arch: int = C.field("architecture", default=1)

    with pytest.raises(ConfigError, match="both a value and the section"):
        C.Schema(Model, Clash)


def test_field_without_path_is_refused():
    @dataclass
    class Plain:
        x: int = 1

    with pytest.raises(UserError, match=r"Plain\.x must be declared with theseus\.config\.field"):
        C.Schema(Plain)


def test_unknown_key_suggests_three_nearest():
    s = schema()
    with pytest.raises(ConfigError) as err:
        C.apply_overrides([(s, s.tree())], ["architecture.n_layer=3"])
    message = str(err.value)
    assert message.startswith("unknown config key 'architecture.n_layer'")
    suggestions = message.split("did you mean ")[1].rstrip("?").split(", ")
    assert len(suggestions) == 3
    assert suggestions[0] == "architecture.n_layers"


def test_type_errors_name_key_type_and_value():
    s = schema()
    cfg = s.tree()
    with pytest.raises(
        ConfigError, match=r"architecture\.n_layers: expected int, got 'many' \(str\)"
    ):
        C.apply_overrides([(s, cfg)], ["architecture.n_layers=many"])
    with pytest.raises(ConfigError, match=r"expected int, got 2\.5 \(float\)"):
        C.apply_overrides([(s, cfg)], ["architecture.n_layers=2.5"])
    with pytest.raises(ConfigError, match=r"training\.dataset\.0\.rate: expected float, got 'x'"):
        C.apply_overrides([(s, cfg)], ["training.dataset.0.rate=x"])
    with pytest.raises(ValidationError, match="n_layers"):
        cfg.architecture.n_layers = "many"  # attribute edits are checked too
    assert cfg.architecture.n_layers == 12


def test_overrides_are_yaml_typed_and_reach_every_owning_stage():
    a, b = C.Schema(Model), C.Schema(Data)
    ca, cb = a.tree(), b.tree()
    C.apply_overrides([(a, ca), (b, cb)], ["architecture.block_size=64", "data.rates=[0.5, 0.25]"])
    assert ca.architecture.block_size == 64 and cb.architecture.block_size == 64
    assert list(cb.data.rates) == [0.5, 0.25]


def test_list_index_append_remove():
    s = schema()
    cfg = s.tree()
    C.apply_overrides(
        [(s, cfg)],
        [
            "training.dataset.0.rate=0.5",
            "training.dataset+={name: web, rate: 0.25}",
            "data.rates+=2",
        ],
    )
    assert [(e.name, e.rate) for e in cfg.training.dataset] == [("x", 0.5), ("web", 0.25)]
    assert list(cfg.data.rates) == [1.0, 2.0]
    C.apply_overrides([(s, cfg)], ["~training.dataset.0"])
    assert [e.name for e in cfg.training.dataset] == ["web"]
    C.apply_overrides([(s, cfg)], ["training.dataset=[{name: a}, {name: b, rate: 3}]"])
    assert [(e.name, e.rate) for e in cfg.training.dataset] == [("a", 1.0), ("b", 3.0)]
    with pytest.raises(ConfigError, match="out of range"):
        C.apply_overrides([(s, cfg)], ["training.dataset.9.rate=1"])
    with pytest.raises(ConfigError, match="out of range"):
        C.apply_overrides([(s, cfg)], ["~training.dataset.9"])
    with pytest.raises(ConfigError, match="not in 'Entry'"):
        C.apply_overrides([(s, cfg)], ["training.dataset+={name: c, weight: 1}"])
    with pytest.raises(ConfigError, match="appends to a list"):
        C.apply_overrides([(s, cfg)], ["architecture.n_layers+=1"])
    with pytest.raises(ConfigError, match="write `name: a` with a space after the colon"):
        C.apply_overrides([(s, cfg)], ["training.dataset=[{name:a}]"])


@pytest.mark.parametrize("text", ["novalue", "=3", "a..b=1", "~"])
def test_malformed_overrides(text):
    with pytest.raises(ConfigError, match="bad override"):
        C.Override.parse(text)


def test_values_that_are_not_yaml_are_refused_for_typed_fields():
    s = schema()
    with pytest.raises(ConfigError, match=r"bad override 'data.rates=\[1,': value is not valid"):
        C.apply_overrides([(s, s.tree())], ["data.rates=[1,"])


@dataclass
class Text:
    separator: str | None = C.field("data/separator", default=None)
    store: str = C.field("data/store", default="x")
    paths: list[str] = C.field("data/paths", default_factory=list)


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("data.separator=---", "data.separator", "---"),
        ("data.separator=#", "data.separator", "#"),
        ("data.separator=@@", "data.separator", "@@"),
        ("data.separator=[SEP]", "data.separator", "[SEP]"),
        ("data.separator=null", "data.separator", None),
        ("data.separator=~", "data.separator", None),
        ("data.separator='null'", "data.separator", "null"),
        ('data.separator="a # b"', "data.separator", "a # b"),
        ("data.store=no", "data.store", "no"),
        ("data.store=on", "data.store", "on"),
        ("data.store=12", "data.store", "12"),
        ("data.store=null", "data.store", "null"),
        ("data.paths=[a, b]", "data.paths", ["a", "b"]),
        ("data.paths=[no, '#', '@@']", "data.paths", ["no", "#", "@@"]),
        ("data.paths+=no", "data.paths", ["no"]),
        ("data.paths+=#", "data.paths", ["#"]),
        ("training.dataset.0.name=off", "training.dataset.0.name", "off"),
        ("training.dataset+={name: b, rate: 2}", "training.dataset.1.rate", 2.0),
        ("architecture.n_layers=3", "architecture.n_layers", 3),
    ],
)
def test_string_fields_take_the_override_text_as_written(override, key, expected):
    s = C.Schema(Model, Mixture, Text)
    cfg = s.tree()
    C.apply_overrides([(s, cfg)], [override])
    value = OmegaConf.select(cfg, key)
    assert (OmegaConf.to_container(value) if key == "data.paths" else value) == expected


def test_appending_a_list_explains_that_plus_equals_appends_one_element():
    s = C.Schema(Text, Mixture)
    cfg = s.tree()
    with pytest.raises(ConfigError) as err:
        C.apply_overrides([(s, cfg)], ["data.paths+=[a, b]"])
    message = str(err.value)
    assert "+= appends one element" in message and "data.paths=[a, b]" in message
    with pytest.raises(ConfigError, match="appends one element"):
        C.apply_overrides([(s, cfg)], ["training.dataset+=[{name: a}]"])
    C.apply_overrides([(s, cfg)], ["data.paths+='[draft]'"])
    assert list(cfg.data.paths) == ["[draft]"]


def test_unknown_field_of_a_list_element_suggests_the_nearest():
    s = schema()
    with pytest.raises(ConfigError) as err:
        C.apply_overrides([(s, s.tree())], ["training.dataset.0.nam=x"])
    message = str(err.value)
    assert message.startswith("unknown config key 'training.dataset.0.nam'")
    assert message.split("did you mean ")[1].startswith("training.dataset.0.name")


def test_bad_interpolation_names_the_key_and_the_reference():
    s = schema()
    cfg = s.tree()
    C.apply_overrides([(s, cfg)], ["training.doubled=${architecture.nope}"])
    for check in (C.check_values, C.check_complete):
        with pytest.raises(ConfigError) as err:
            check(s, cfg)
        message = str(err.value)
        assert message.startswith("training.doubled: interpolation ${architecture.nope}")
        assert "architecture.nope" in message.split("does not resolve")[1]
    # an interpolation of a value still required is reported as required, not as broken
    C.apply_overrides([(s, cfg)], ["training.doubled=${data.name}"])
    C.check_values(s, cfg)
    assert C.missing_keys(cfg) == ["data.name", "training.doubled"]


def test_required_values_are_all_listed_before_work():
    @dataclass
    class Two:
        a: str = C.field("x/a")
        b: int = C.field("x/b")

    s = C.Schema(Two)
    cfg = s.tree()
    with pytest.raises(ConfigError) as err:
        C.check_complete(s, cfg, "demo")
    assert "x.a" in str(err.value) and "x.b" in str(err.value)
    C.apply_overrides([(s, cfg)], ["x.a=hello", "x.b=3"])
    C.check_complete(s, cfg)
    assert C.configure(Two, cfg) == Two(a="hello", b=3)


def test_choices_are_enforced():
    @dataclass
    class Pick:
        mode: str = C.field("x/mode", default="a", choices=["a", "b"])

    s = C.Schema(Pick)
    cfg = s.tree()
    C.apply_overrides([(s, cfg)], ["x.mode=c"])
    with pytest.raises(ConfigError, match="'c' is not one of 'a', 'b'"):
        C.check_complete(s, cfg)


def test_minimums_are_enforced_and_null_stays_allowed_where_optional():
    @dataclass
    class Bounds:
        every: int = C.field("x/every", default=10, minimum=1)
        keep: int | None = C.field("x/keep", default=None, minimum=1)
        rate: float = C.field("x/rate", default=0.5, minimum=0)

    s = C.Schema(Bounds)
    _assert_refused(
        s,
        {
            "x.every=0": "x.every=0: must be >= 1",
            "x.keep=-2": "x.keep=-2: must be >= 1",
            "x.rate=-0.1": "x.rate=-0.1: must be >= 0",
        },
    )
    cfg = s.tree()
    C.apply_overrides([(s, cfg)], ["x.every=1", "x.keep=null", "x.rate=0"])
    C.check_complete(s, cfg)


def test_maximums_strict_bounds_and_finiteness_are_enforced():
    @dataclass
    class Bounds:
        beta: float = C.field("x/beta", default=0.9, minimum=0, below=1)
        eps: float = C.field("x/eps", default=1e-8, above=0)
        share: float = C.field("x/share", default=0.2, minimum=0, maximum=1)
        seed: int = C.field("x/seed", default=0, minimum=0, maximum=2**32 - 1)

    s = C.Schema(Bounds)
    _assert_refused(
        s,
        {
            "x.beta=1": "x.beta=1.0: must be < 1",
            "x.eps=0": "x.eps=0.0: must be > 0",
            "x.share=1.5": "x.share=1.5: must be <= 1",
            "x.share=nan": "x.share=nan: must be a finite number",
            "x.share=-inf": "x.share=-inf: must be a finite number",
            "x.seed=4294967296": "x.seed=4294967296: must be <= 4294967295",
        },
    )
    cfg = s.tree()
    C.apply_overrides([(s, cfg)], ["x.beta=0.999", "x.eps=1e-30", "x.share=1", "x.seed=4294967295"])
    C.check_complete(s, cfg)


def test_a_components_check_joins_fields_once_all_are_set():
    @dataclass
    class Range:
        low: float = C.field("r/low")
        high: float = C.field("r/high", default=1.0)

        def check(self) -> None:
            if self.low > self.high:
                raise ConfigError(f"r.low={self.low} is above r.high={self.high}")

    s = C.Schema(Range)
    cfg = s.tree()
    C.check_values(s, cfg)  # r.low unset: nothing to compare yet
    with pytest.raises(ConfigError, match="required config values missing"):
        C.check_complete(s, cfg)
    C.apply_overrides([(s, cfg)], ["r.low=2"])
    with pytest.raises(ConfigError, match=r"r\.low=2\.0 is above r\.high=1\.0"):
        C.check_values(s, cfg)
    C.apply_overrides([(s, cfg)], ["r.high=3"])
    C.check_complete(s, cfg)


def test_integer_fields_take_floats_that_are_whole_numbers():
    @dataclass
    class Counts:
        n: int = C.field("x/n", default=1)
        budget: int | None = C.field("x/budget", default=None)
        sizes: list[int] = C.field("x/sizes", default_factory=lambda: [1])

    s = C.Schema(Counts)
    cfg = s.tree()
    C.apply_overrides(
        [(s, cfg)], ["x.n=2.0", "x.budget=1e9", "x.sizes=[1e3, 2]", "x.sizes+=4.0", "x.sizes.0=5e0"]
    )
    assert (cfg.x.n, cfg.x.budget, list(cfg.x.sizes)) == (2, 10**9, [5, 2, 4])
    assert isinstance(cfg.x.budget, int)
    C.merge_values(s, cfg, yaml.safe_load("x: {n: 1e3, budget: 2.5e3}"))  # YAML reads 1e3 as text
    assert (cfg.x.n, cfg.x.budget) == (1000, 2500)
    for override in ("x.n=1.5", "x.budget=2.5", "x.sizes=[1, 0.5]", "x.n=inf"):
        with pytest.raises(ConfigError, match=r"expected int, got .*; write a whole number"):
            C.apply_overrides([(s, cfg)], [override])
    with pytest.raises(ConfigError, match=r"x\.n: expected int, got 'many'"):
        C.apply_overrides([(s, cfg)], ["x.n=many"])


def test_configure_reads_typed_dataclasses():
    s = schema()
    cfg = s.tree()
    C.apply_overrides([(s, cfg)], ["data.name=web", "architecture.block_size=128"])
    data = C.configure(Data, cfg)
    mixture = C.configure(Mixture, cfg)
    assert data == Data(block_size=128, name="web", rates=[1.0])
    assert mixture.dataset == [Entry()] and isinstance(mixture.dataset[0], Entry)
    assert mixture.doubled == 128  # interpolation resolved


def test_a_tree_written_before_a_setting_existed_reads_its_default():
    """Checkpoints and config files keep the tree they were written with: a setting added
    since reads as its default, a preset's value for a preset; a required one stays required."""
    old = OmegaConf.create({"architecture": {"n_layers": 2}})
    assert C.configure(Model, old) == Model(n_layers=2)
    assert C.configure(Model(d_model=64), old) == Model(n_layers=2, d_model=64)
    with pytest.raises(ConfigError, match=r"required config value missing: data\.name"):
        C.configure(Data, old)


def test_a_preset_instance_sets_the_schema_defaults():
    s = C.Schema(Model(d_model=64), Data)
    assert s.entries["architecture.d_model"].default == 64
    assert C.configure(Model, s.tree()).d_model == 64


def test_yaml_has_help_comments_and_round_trips():
    s = schema()
    cfg = s.tree()
    C.apply_overrides([(s, cfg)], ["data.name='it''s: \"quoted\"'", "training.dataset+={name: b}"])
    text = C.to_yaml(cfg, s, {"job": "demo"})
    assert "  # transformer blocks\n    n_layers: 12\n" in text
    assert "???" not in text  # data.name is set
    data = yaml.safe_load(text)
    back = s.tree()
    C.merge_values(s, back, data["config"])
    assert OmegaConf.to_container(back) == OmegaConf.to_container(cfg)
    assert C.to_yaml(back, s, {"job": "demo"}) == text


def test_hand_edited_yaml_loads_back_identically(tmp_path):
    s = schema()
    cfg = s.tree()
    path = tmp_path / "c.yaml"
    path.write_text(C.to_yaml(cfg, s, {"job": "demo"}))
    edited = (
        path.read_text()
        .replace("n_layers: 12", "n_layers: 4   # fewer")
        .replace("name: ???", "name: web")
    )
    path.write_text("# my notes\n" + edited)
    back = s.tree()
    C.merge_values(s, back, C.read_yaml(path)["config"])
    C.apply_overrides([(s, cfg)], ["architecture.n_layers=4", "data.name=web"])
    assert OmegaConf.to_container(back) == OmegaConf.to_container(cfg)


def test_missing_values_round_trip_as_missing(tmp_path):
    s = schema()
    text = C.to_yaml(s.tree(), s, {})
    back = s.tree()
    C.merge_values(s, back, yaml.safe_load(text)["config"])
    assert C.missing_keys(back) == ["data.name"]


def test_lenient_merge_reports_dropped_keys():
    s = schema()
    cfg = s.tree()
    dropped = C.merge_values(
        s, cfg, {"architecture": {"n_layers": 2, "gone": 1}, "data": {"rates": "x"}}, strict=False
    )
    assert dropped == ["architecture.gone", "data.rates"]
    assert cfg.architecture.n_layers == 2


def test_read_yaml_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        C.read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("config:\n  a: [1,\n")
    with pytest.raises(UserError, match=r"bad YAML in .*line"):
        C.read_yaml(bad)


def _assert_refused(schema: C.Schema, cases: dict[str, str]) -> None:
    """Each override alone is refused by the completeness check with its message."""
    for override, message in cases.items():
        cfg = schema.tree()
        C.apply_overrides([(schema, cfg)], [override])
        with pytest.raises(ConfigError, match=message):
            C.check_complete(schema, cfg)
