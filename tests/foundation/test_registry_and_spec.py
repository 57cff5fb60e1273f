"""The registry and the execution spec's output layout."""

import pytest

from theseus.base.chips import CHIPS, GB, GIB, TERA, get_chip
from theseus.errors import UserError
from theseus.job import ExecutionSpec, Request
from theseus.registry import Registry


def test_registering_a_name_twice_is_an_error():
    reg: Registry = Registry("widget", "widget")

    @reg.register("a")
    class A:
        """First."""

    with pytest.raises(UserError, match="widget 'a' is defined twice") as err:

        @reg.register("a")
        class B:
            """Second."""

    assert f"at {__file__}:14 and at {__file__}:20" in str(err.value)
    assert reg["a"] is A
    assert [(row.name, row.description) for row in reg.listings()] == [("a", "First.")]


def test_unknown_names_suggest_close_ones():
    reg: Registry = Registry("widget", "widget")
    reg.register("gpt/train/pretrain")(type("X", (), {}))
    with pytest.raises(UserError, match="did you mean gpt/train/pretrain"):
        reg["gpt/train/pretrian"]


def test_load_registers_user_jobs(toy):
    from theseus.registry import JOBS

    assert JOBS["toy/echo"].__name__ == "Echo"


def test_spec_names_its_folders_without_creating_them(tmp_path):
    root = tmp_path / "not" / "yet"
    spec = ExecutionSpec("run-1", root, "proj", "grp")
    assert spec.run_dir == root / "runs" / "proj" / "grp" / "run-1"
    assert spec.checkpoint_dir == root / "checkpoints" / "proj" / "grp" / "run-1"
    assert not root.exists()


@pytest.mark.parametrize("name", ["", "..", "a/b", "-x", ".hidden", "a b", "x\ny"])
def test_spec_refuses_names_that_are_not_folder_names(tmp_path, name):
    with pytest.raises(UserError):
        ExecutionSpec(name, tmp_path)


def test_chip_catalogue():
    assert {
        "cpu",
        "h100",
        "h100-pcie",
        "h100-nvl",
        "h200",
        "b200",
        "a100-40gb",
        "a100-80gb",
        "a100-pcie-40gb",
        "l40s",
        "l40",
        "a6000",
        "ada6000",
        "rtx4090",
        "rtx5090",
        "gb10",
        "tpu-v2",
        "tpu-v3",
        "tpu-v4",
        "tpu-v5e",
        "tpu-v5p",
        "tpu-v6e",
    } == set(CHIPS)
    assert get_chip("H100").bf16_flops == pytest.approx(989.4e12)
    assert all(c.bf16_flops and c.memory_bytes > 0 for c in CHIPS.values() if c.name != "cpu")
    with pytest.raises(UserError, match="known chips: cpu, h100"):
        get_chip("v100")


# The reference system's chip names: (catalogue name, memory, dense bf16 peak per chip).
REFERENCE_CHIPS = {
    "a100-sxm4-80gb": ("a100-80gb", 80 * GB, 312 * TERA),
    "a100-pcie-40gb": ("a100-pcie-40gb", 40 * GB, 312 * TERA),
    "l40": ("l40", 48 * GB, 181.05 * TERA),
    "ada6000": ("ada6000", 48 * GB, 364.2 * TERA),
    "gb10": ("gb10", 128 * GB, 62.5 * TERA),
    "tpu-v2": ("tpu-v2", 16 * GIB, 45 * TERA),
    "tpu-v3": ("tpu-v3", 32 * GIB, 123 * TERA),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_CHIPS))
def test_reference_chip_names_resolve(name):
    canonical, memory, flops = REFERENCE_CHIPS[name]
    chip = get_chip(name)
    assert (chip.name, chip.memory_bytes, chip.bf16_flops) == (canonical, memory, flops)
    # an alias is the very entry of the chip it names, in any case
    assert get_chip(name.upper()) is chip is CHIPS[canonical]


def test_an_unknown_chip_is_one_line_listing_the_known_ones():
    with pytest.raises(UserError) as error:
        get_chip("a100-sxm5")
    message = str(error.value)
    assert "\n" not in message and message.startswith("unknown chip 'a100-sxm5'; known chips: cpu")
    assert all(name in message for name in ("a100-pcie-40gb", "l40", "ada6000", "gb10", "tpu-v3"))


def test_request_validation():
    Request.from_dict({"chip": "cpu", "n": 0})
    with pytest.raises(UserError, match="n=0 means a CPU run, but the chip is h100"):
        Request.from_dict({"chip": "h100", "n": 0})
    with pytest.raises(UserError, match="unknown key"):
        Request.from_dict({"chips": 1})
    with pytest.raises(UserError, match="expected an integer"):
        Request.from_dict({"n": "8"})
