"""Model configs survive their JSON round trip (meta.json) and tolerate other versions' knobs."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from retrievers.configs import config_from_dict, config_to_dict
from retrievers.xr_linear import XRConfig
from suggest.model import SuggestConfig


@pytest.mark.parametrize("config", [XRConfig(), XRConfig(pseudo_templates=("artist", "title"), beam_size=3),
                                    SuggestConfig(), SuggestConfig(ngrams=(2, 4))])
def test_round_trip_through_json_gives_an_equal_hashable_config(config) -> None:
    back = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config
    hash(back)


def test_unknown_keys_are_dropped_and_missing_keys_take_defaults() -> None:
    assert XRConfig.from_dict({"beam_size": 4, "knob_of_a_later_version": 1}) == XRConfig(beam_size=4)


def test_only_dataclasses() -> None:
    class NotAConfig:
        pass

    with pytest.raises(TypeError):
        config_from_dict(NotAConfig, {})  # type: ignore[type-var]


def test_lists_stay_lists_where_the_field_is_not_a_tuple() -> None:
    @dataclass
    class WithList:
        names: list[str]
        pair: tuple[int, int] = (1, 2)

    back = config_from_dict(WithList, json.loads(json.dumps(config_to_dict(WithList(["a"], (3, 4))))))
    assert back.names == ["a"] and back.pair == (3, 4)
