"""Property tests for the compose reader: any docker_compose_file gives facts, never an exception.

The app_compose is read before ``compose_hash_binding`` is known, so its text is hostile until
then. :func:`proxy.attestation.compose.parse_compose` must return the same facts for the same
text every time and raise nothing, whether the text is YAML-looking noise (anchors, aliases,
merge keys, flow and block collections, quotes) or a well-formed compose written in either
style; and a name written after ``--model`` in a command list is always found. A command
without quotes or backslashes is split as ``shlex.split`` splits it, without shlex.
"""

from __future__ import annotations

import json
import re
import shlex
from itertools import pairwise
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.attestation.compose import parse_compose, shell_words_unquoted

NAME = re.compile(r"[A-Za-z0-9][\w.\-/:]*")

# Pieces that steer YAML and the model-name search down their less common branches.
PIECES = st.sampled_from(
    [
        "services:",
        "\n",
        "\n  ",
        "\n    ",
        "- ",
        ": ",
        ", ",
        "[",
        "]",
        "{",
        "}",
        "&a ",
        "*a",
        "<<: ",
        "<<: *a",
        "'",
        '"',
        "\\",
        ">",
        "|",
        "#",
        "command",
        "entrypoint",
        "environment",
        "image",
        "--model",
        "--served-model-name",
        "=",
        "MODEL_NAME",
        "org/m",
        "${MODEL}",
        "!!python/object:os.system",
        "!!binary",
        "? ",
        "---",
        "...",
    ]
)
NOISE = st.lists(st.one_of(PIECES, st.text(max_size=6)), max_size=40).map("".join)

ARGUMENT = st.one_of(
    st.sampled_from(["--model", "--served-model-name", "--port", "org/m", "m-2", "${M}", "/x"]),
    st.text(max_size=10),
    st.integers(),
)
SERVICE = st.fixed_dictionaries(
    {"image": st.just("x")},
    optional={
        "command": st.one_of(st.lists(ARGUMENT, max_size=8), st.text(max_size=30)),
        "entrypoint": st.lists(ARGUMENT, max_size=4),
        "environment": st.one_of(
            st.lists(st.sampled_from(["MODEL_NAME=org/e", "A=b", "MODEL_NAME"]), max_size=3),
            st.dictionaries(st.sampled_from(["MODEL_NAME", "A"]), st.text(max_size=8)),
        ),
    },
)
SERVICES = st.dictionaries(st.text(min_size=1, max_size=6), SERVICE, min_size=1, max_size=4)


def _manifest(docker_compose_file: str) -> str:
    return json.dumps({"name": "t", "docker_compose_file": docker_compose_file})


def _after_flags(arguments: Any) -> list[str]:
    """What follows --model or --served-model-name in a list, where it looks like a name."""
    if not isinstance(arguments, list):
        return []
    return [
        following
        for flag, following in pairwise(arguments)
        if flag in ("--model", "--served-model-name")
        and isinstance(following, str)
        and NAME.fullmatch(following)
    ]


@settings(max_examples=400, deadline=None)
@given(NOISE)
def test_any_text_gives_the_same_facts_and_never_raises(text: str) -> None:
    first = parse_compose(_manifest(text))
    assert parse_compose(_manifest(text)) == first
    assert all(isinstance(name, str) and name for name in first.model_names)
    assert len(set(first.model_names)) == len(first.model_names)


@settings(max_examples=200, deadline=None)
@given(SERVICES, st.booleans())
def test_a_name_after_a_flag_in_a_command_list_is_found(
    services: dict[str, dict[str, Any]], flow: bool
) -> None:
    text = yaml.safe_dump({"services": services}, default_flow_style=flow, sort_keys=False)
    facts = parse_compose(_manifest(text))
    assert facts.error is None
    assert [image.service for image in facts.images] == list(services)
    for spec in services.values():
        for key in ("entrypoint", "command"):
            for name in _after_flags(spec.get(key)):
                assert name in facts.model_names


@given(
    st.text(
        # shlex's whitespace, the whitespace it does not treat as such, and word characters.
        alphabet=st.sampled_from([" ", "\t", "\r", "\n", "\x0b", "\x0c", "\xa0", "\u2003"])
        | st.characters(exclude_characters="'\"\\", exclude_categories=["Cs"]),
        max_size=60,
    )
)
@settings(max_examples=400, deadline=None)
def test_an_unquoted_command_splits_as_shlex_splits_it(command: str) -> None:
    assert shell_words_unquoted(command) == shlex.split(command)
