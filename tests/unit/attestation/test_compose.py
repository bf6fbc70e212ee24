"""What the measured compose runs: digest pinning, model binding, the compose manager's quote."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from proxy.attestation.compose import (
    MAX_COMPOSE_CHARS,
    MAX_MERGED_ENTRIES,
    MAX_SPLIT_CHARS,
    ComposeFacts,
    Image,
    app_compose_of,
    compose_images_check,
    is_pinned,
    model_binding_check,
    parse_compose,
)
from tests.support.attestation_helpers import (
    FIXTURE_LIST,
    FIXTURES_BY_NAME,
    Fixture,
    body_of,
    policy_for,
)
from tests.support.trust_helpers import failed, verify

GLM = FIXTURES_BY_NAME["glm_5_1"]
GEMMA = FIXTURES_BY_NAME["gemma_3_27b_p"]
QWEN = FIXTURES_BY_NAME["venice_qwen3_5_122b"]
ACI = FIXTURES_BY_NAME["live_evidence_aci"]
DIGEST = "sha256:" + "ab" * 32


def _compose(services: str) -> str:
    return json.dumps({"name": "t", "docker_compose_file": "services:\n" + services})


def test_pinned_means_a_digest() -> None:
    assert is_pinned(f"nearaidev/compose-manager@{DIGEST}")
    assert is_pinned(f"ghcr.io/org/app:1.2@{DIGEST}")
    assert not is_pinned("dstacktee/dstack-ingress:1.2")
    assert not is_pinned("alpine:latest")
    assert not is_pinned("alpine@sha256:short")


def test_images_tags_and_builds_are_reported() -> None:
    facts = parse_compose(
        _compose(
            f"  a:\n    image: x/a@{DIGEST}\n  b:\n    image: x/b:latest\n  c:\n    build: .\n"
        )
    )
    assert [(i.service, i.pinned) for i in facts.images] == [
        ("a", True),
        ("b", False),
        ("c", False),
    ]
    assert facts.images[2].reference is None


def test_hostile_or_broken_manifests_never_raise() -> None:
    for text in ("{", "[]", json.dumps({"docker_compose_file": "services: [unclosed"}), "x" * 2):
        facts = parse_compose(text)
        assert facts.error is not None
        assert facts.images == ()


def test_near_captures_pin_every_image_by_digest() -> None:
    check = verify(GLM).check("compose_images_pinned")
    assert (check.ok, check.enforced) == (True, True)
    images = verify(GLM).facts["compose"]["images"]
    assert all(image["pinned"] for image in images)


def test_an_unpinned_compose_image_is_refused_by_default_and_names_the_setting() -> None:
    strict = replace(policy_for(GEMMA), allow_unpinned_images=False)
    report = verify(GEMMA, policy=strict)
    assert failed(report) == {"compose_images_pinned"}
    detail = report.check("compose_images_pinned").detail
    assert "dstacktee/dstack-ingress:1.2" in detail
    assert "attestation.allow_unpinned_images" in detail
    tolerant = verify(GEMMA).check("compose_images_pinned")
    assert (tolerant.ok, tolerant.enforced) == (False, False)


def test_the_aci_capture_shows_no_manifest_and_says_so() -> None:
    check = verify(ACI).check("compose_images_pinned")
    assert (check.ok, check.enforced) == (None, False)
    assert "no app_compose" in check.detail


def test_the_measured_compose_binds_the_served_model_where_it_names_one() -> None:
    check = verify(GEMMA).check("model_binding")
    assert (check.ok, check.enforced) == (True, True)
    assert "google/gemma-3-27b-it" in check.detail
    body = body_of(GEMMA)
    body["upstream_model"] = "meta-llama/Llama-3-70B"  # Venice's (unauthenticated) claim
    report = verify(GEMMA, body)
    assert failed(report) == {"model_binding"}


def test_where_nothing_measured_names_the_model_the_report_says_so() -> None:
    for fixture in (GLM, ACI):
        check = verify(fixture).check("model_binding")
        assert (check.ok, check.enforced) == (None, False)
        assert "unauthenticated label" in check.detail
    assert "GLM-5.1.yaml" in verify(GLM).check("model_binding").detail  # the manager's deploy
    assert "unauthenticated label" in verify(GLM).check("model_match").detail


# The model names each real capture's measured compose gives, in order, and its model_binding
# verdict: (ok, enforced, the served name the detail starts with, or None when none is named).
# The captures write their commands as folded strings (`command: >`) and their environments as
# `- MODEL_NAME=` lists; reading the YAML's list forms must not change any of these.
CAPTURE_MODEL_NAMES: dict[str, tuple[tuple[str, ...] | None, bool | None, bool, str | None]] = {
    "glm_5_1": ((), None, False, None),
    "gemma_3_27b_p": (
        ("openai/gpt-oss-20b", "google/gemma-3-27b-it", "RedHatAI/gemma-3-27b-it-FP8-dynamic"),
        True,
        True,
        "google/gemma-3-27b-it",
    ),
    "gpt_oss_120b_p": ((), None, False, None),
    "qwen3_vl_30b_a3b_p": (
        (
            "RedHatAI/Qwen2.5-7B-Instruct-FP8-dynamic",
            "qwen/qwen-2.5-7b-instruct",
            "Qwen/Qwen3-VL-30B-A3B-Instruct-FP8",
            "qwen/qwen3-vl-30b-a3b-instruct",
        ),
        True,
        True,
        "qwen/qwen3-vl-30b-a3b-instruct",
    ),
    "live_evidence_aci": (None, None, False, None),  # its report shows no app_compose
    "venice_qwen3_5_122b": ((), None, False, None),
}


def test_every_capture_is_pinned() -> None:
    assert set(CAPTURE_MODEL_NAMES) == {fixture.name for fixture in FIXTURE_LIST}


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=lambda f: f.name)
def test_the_model_names_of_each_real_capture(fixture: Fixture) -> None:
    names, ok, enforced, served = CAPTURE_MODEL_NAMES[fixture.name]
    report = verify(fixture)
    compose = report.facts["compose"]
    assert (compose["model_names"] if compose is not None else None) == (
        list(names) if names is not None else None
    )
    if compose is not None:
        assert compose["error"] is None
        assert report.facts["compose_bound"] is True
    check = report.check("model_binding")
    assert (check.ok, check.enforced) == (ok, enforced)
    if served is None:
        assert check.detail.startswith(UNBOUND_NOTE)
    else:
        shown = ", ".join(names or ())
        assert check.detail == f"the measured compose serves {served} (names: {shown})"


def test_the_compose_managers_second_quote_verifies_with_its_own_reportdata() -> None:
    check = verify(GLM).check("compose_manager_quote")
    assert (check.ok, check.enforced, check.tier) == (True, True, "quote")
    assert "DCAP UpToDate" in check.detail
    assert "compose_up actions authenticated" in check.detail
    # The April capture was re-serialized (keys sorted): its actions are shown as unusable.
    assert "not used" in verify(QWEN).check("compose_manager_quote").detail


def test_a_tampered_compose_manager_attestation_fails() -> None:
    body = body_of(GLM)
    body["compose_manager_attestation"]["actions_hash"] = "00" * 32
    report = verify(GLM, body)
    assert failed(report) == {"compose_manager_quote"}
    assert "actions_hash" in report.check("compose_manager_quote").detail
    body = body_of(GLM)
    quote = bytearray(bytes.fromhex(body["compose_manager_attestation"]["quote"]))
    quote[700] ^= 0x01  # inside the signature
    body["compose_manager_attestation"]["quote"] = quote.hex()
    assert failed(verify(GLM, body)) == {"compose_manager_quote"}


def test_no_compose_manager_is_reported_not_failed() -> None:
    check = verify(GEMMA).check("compose_manager_quote")
    assert (check.ok, check.enforced) == (None, False)


# --- parse_compose, exactly ----------------------------------------------------------------


def _manifest(docker_compose_file: object, **extra: object) -> str:
    return json.dumps({"name": "t", "docker_compose_file": docker_compose_file, **extra})


def _image(service: str, reference: str | None, pinned: bool = False) -> Image:
    return Image(service, reference, pinned)


@pytest.mark.parametrize(
    ("app_compose", "facts"),
    [
        (
            "x" * (MAX_COMPOSE_CHARS + 1),
            ComposeFacts(None, (), (), "app_compose is over 1000000 characters"),
        ),
        ("{", ComposeFacts(None, (), (), "app_compose is not JSON")),
        ("[" * 100_000, ComposeFacts(None, (), (), "app_compose is not JSON")),
        ("[]", ComposeFacts(None, (), (), "app_compose is not a JSON object")),
        (
            json.dumps({"name": "t"}),
            ComposeFacts("t", (), (), "app_compose has no docker_compose_file"),
        ),
        (
            json.dumps({"name": 5, "docker_compose_file": {"services": {}}}),
            ComposeFacts(None, (), (), "app_compose has no docker_compose_file"),
        ),
        (
            _manifest("command: --model org/m\nservices: [unclosed"),
            ComposeFacts("t", (), (), "docker_compose_file is not valid YAML"),
        ),
        (
            _manifest("services: {}\n# MODEL_NAME=org/m\n"),
            ComposeFacts("t", (), (), "docker_compose_file has no services"),
        ),
        (
            _manifest("services: [a, b]\n"),
            ComposeFacts("t", (), (), "docker_compose_file has no services"),
        ),
        (
            _manifest("- services\n"),
            ComposeFacts("t", (), (), "docker_compose_file has no services"),
        ),
        (_manifest("x: 1\n"), ComposeFacts("t", (), (), "docker_compose_file has no services")),
        (
            _manifest(
                f"services:\n  a:\n    image: x/a@{DIGEST}\n  b: x/b\n  c:\n    image: ''\n"
                "  d:\n    image: 5\n  e:\n    image: x/e:1\n"
            ),
            ComposeFacts(
                "t",
                (
                    _image("a", f"x/a@{DIGEST}", True),
                    _image("b", None),
                    _image("c", None),
                    _image("d", None),
                    _image("e", "x/e:1"),
                ),
                (),
                None,
            ),
        ),
        (
            _manifest(
                f"include: [other.yml]\nextends: base\nservices:\n  a:\n    image: x/a@{DIGEST}\n"
            ),
            ComposeFacts(
                "t", (_image("a", f"x/a@{DIGEST}", True),), (), "not followed: include, extends"
            ),
        ),
        (
            _manifest("extends: base\nservices:\n  a:\n    build: .\n"),
            ComposeFacts("t", (_image("a", None),), (), "not followed: extends"),
        ),
    ],
)
def test_parse_compose_exactly(app_compose: str, facts: ComposeFacts) -> None:
    assert parse_compose(app_compose) == facts


def test_a_manifest_of_exactly_the_limit_is_parsed() -> None:
    head = _manifest(f"services:\n  a:\n    image: x/a@{DIGEST}\n#")
    padded = head[:-2] + "x" * (MAX_COMPOSE_CHARS - len(head)) + head[-2:]
    assert len(padded) == MAX_COMPOSE_CHARS
    assert parse_compose(padded) == ComposeFacts(
        "t", (_image("a", f"x/a@{DIGEST}", True),), (), None
    )


def _merging(services: int, entries: int, extra: str = "") -> str:
    """A compose whose services each merge (``<<``) one anchor of ``entries`` entries."""
    anchor = ", ".join(f"k{index}: v" for index in range(entries))
    lines = "".join(f"  s{index}: {{<<: *common, image: x}}\n" for index in range(services))
    return _manifest(f"x-common: &common {{{anchor}}}\nservices:\n{lines}{extra}")


def test_merge_keys_may_copy_up_to_the_budget() -> None:
    assert MAX_MERGED_ENTRIES == 10_000
    facts = parse_compose(_merging(100, 100))  # 100 services x 100 entries: exactly the budget
    assert facts.error is None
    assert facts.images == tuple(_image(f"s{index}", "x") for index in range(100))


def test_merge_keys_that_copy_past_the_budget_are_not_read() -> None:
    # One entry more, in a mapping of its own: the budget counts the whole document.
    text = _merging(100, 100, "  last: {<<: {--model: x}, command: --model org/m}\n")
    assert parse_compose(text) == ComposeFacts(
        "t", (), (), "docker_compose_file merges over 10000 entries with << (not read)"
    )
    # 400 services merging 100 entries each: refused at the budget, not built (N x K entries).
    assert parse_compose(_merging(400, 100)).error == (
        "docker_compose_file merges over 10000 entries with << (not read)"
    )


def test_an_alias_bomb_is_shared_not_copied() -> None:
    # "Billion laughs": 9 levels of 9 aliases each name 9^9 strings, but the loader shares each
    # node it aliases (nothing is copied), so this loads in the size of its text.
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level, name in enumerate("bcdefghi"):
        lines.append(f"{name}: &{name} [{', '.join(['*' + 'abcdefgh'[level]] * 9)}]")
    lines.append("services:\n  s:\n    image: x\n    command: *i\n    environment: *i\n")
    assert parse_compose(_manifest("\n".join(lines))) == ComposeFacts(
        "t", (_image("s", "x"),), (), None
    )


def test_model_names_in_each_form_once_each_in_order() -> None:
    text = (
        "services:\n  vllm:\n    image: x\n"
        "    command: --model org/BOX --served-model-name=org/served-X\n"
        "    environment:\n      - MODEL_NAME=org/env.v1:2\n"
        "    entrypoint: sh -c \"vllm serve --model 'org/BOX' --served-model-name 'org/quoted'\"\n"
    )
    # The entrypoint, then the command, then the environment; each name once.
    assert parse_compose(_manifest(text)).model_names == (
        "org/BOX",
        "org/quoted",
        "org/served-X",
        "org/env.v1:2",
    )


@pytest.mark.parametrize(
    "text",
    [
        "services:\n  vllm:\n    image: x  # --model org/m\n",
        "# MODEL_NAME=org/m\nservices:\n  vllm:\n    image: x\n    command: serve\n",
        "services:\n  vllm:\n    image: x\n    labels: [--model org/m, MODEL_NAME=org/m]\n",
        "services:\n  vllm:\n    image: x\n    healthcheck: {test: [--model, org/m]}\n",
        "x-note: --model org/m\nservices:\n  vllm: {image: x}\n",
    ],
)
def test_a_comment_or_any_other_key_names_no_model(text: str) -> None:
    """Only what a service runs binds a model: a comment saying ``--model org/m`` does not."""
    assert parse_compose(_manifest(text)).model_names == ()


def test_a_comment_cannot_make_the_binding_pass() -> None:
    text = _vllm("command: --model org/other\n# --model org/claimed")
    facts = parse_compose(text)
    assert facts.model_names == ("org/other",)
    check = model_binding_check(facts, True, claimed="org/claimed", requested="claimed")
    assert (check.ok, check.enforced) == (False, True)


@pytest.mark.parametrize(
    "lines",
    [
        "command: --model org/m${SUFFIX}",
        "command: --model org/m$SUFFIX --port 8000",
        "command: --served-model-name=org/m${SUFFIX}",
        "command: --model-path org/m*",
        "command: --model org/m`cat /x`",
        'command: [sh, -c, "vllm serve --model org/m${SUFFIX}"]',
        'entrypoint: sh -c "exec vllm --model org/m$$X"',
        "environment: [MODEL_NAME=org/m${SUFFIX}]",
        "environment: {MODEL_NAME: org/m${SUFFIX}}",
        'command: ["MODEL_NAME=org/m${X} vllm"]',
    ],
)
def test_a_name_the_host_completes_at_deploy_time_is_no_name(lines: str) -> None:
    """``org/m${SUFFIX}`` is filled in from the host when the compose is deployed, which is not
    measured: reading ``org/m`` from it would let the binding pass for a model that may not be
    the one served."""
    facts = parse_compose(_vllm(lines))
    assert facts.model_names == ()
    check = model_binding_check(facts, True, claimed="org/m", requested="m")
    assert check.ok is not True


@pytest.mark.parametrize(
    ("lines", "names"),
    [
        ("command: --model org/m", ("org/m",)),
        ("command: --model org/m;", ("org/m",)),
        ('command: sh -c "vllm serve --model org/m && echo done"', ("org/m",)),
        ('command: sh -c "(vllm --model org/m)"', ("org/m",)),
        ("command: sh -c 'vllm --model org/m|tee log'", ("org/m",)),
        ('command: sh -c "vllm --model org/m\\\n --port 1"', ("org/m",)),
        ("command: [vllm, --model=org/m, --port, '8000']", ("org/m",)),
        ('command: ["--model org/m,x"]', ("org/m",)),
    ],
)
def test_a_name_ends_where_a_shell_word_ends(lines: str, names: tuple[str, ...]) -> None:
    assert parse_compose(_vllm(lines)).model_names == names


def _vllm(lines: str) -> str:
    """A compose of one service, ``vllm``, with these lines (indented) under it."""
    body = "".join(f"    {line}\n" for line in lines.splitlines())
    return _manifest(f"services:\n  vllm:\n    image: x\n{body}")


@pytest.mark.parametrize(
    ("lines", "names"),
    [
        # Flow lists, in double, single or no quotes: nothing stands between flag and value
        # but a comma, which the text search does not cross.
        ('command: ["--model", "org/m", "--served-model-name", "m"]', ("org/m", "m")),
        ("command: ['--model', 'org/m', '--served-model-name', 'm']", ("org/m", "m")),
        ("command: [--model, org/m, --served-model-name, m]", ("org/m", "m")),
        ('entrypoint: [vllm, serve, "--model", "org/m"]', ("org/m",)),
        # Block lists, plain or quoted items.
        ("command:\n  - --model\n  - org/m\n  - --served-model-name\n  - m", ("org/m", "m")),
        ('command:\n  - "--model"\n  - "org/m"', ("org/m",)),
        ("entrypoint:\n  - --served-model-name\n  - 'org/m'", ("org/m",)),
        # One item, flag=value (the text search reads these too).
        ('command: ["--model=org/m", "--served-model-name=m"]', ("org/m", "m")),
        # Items that are not strings are skipped, not the end of the list.
        ("command: [--port, 8000, --model, org/m]", ("org/m",)),
        # A string, split as a shell would; quotes the shell removes hide it from the text search.
        ("command: --model org/m --served-model-name=m", ("org/m", "m")),
        ("command: \"'--model'=org/m '--served-model-name'=m\"", ("org/m", "m")),
        # The environment: a list of KEY=value, or a mapping.
        ("environment:\n  - MODEL_NAME=org/m", ("org/m",)),
        ('environment:\n  - "MODEL_NAME=org/m"', ("org/m",)),
        ('environment: ["MODEL_NAME\\x3Dorg/m"]', ("org/m",)),  # = escaped: YAML's, not the text's
        ("environment:\n  MODEL_NAME: org/m", ("org/m",)),
        ('environment:\n  MODEL_NAME: "org/m"', ("org/m",)),
        ("environment: {OTHER: x, MODEL_NAME: 'org/m'}", ("org/m",)),
    ],
)
def test_model_names_in_yaml_lists_and_mappings(lines: str, names: tuple[str, ...]) -> None:
    assert parse_compose(_vllm(lines)) == ComposeFacts("t", (_image("vllm", "x"),), names, None)


@pytest.mark.parametrize(
    "lines",
    [
        "command: [--model]",  # no value after the flag
        "command: [--model, 5, --served-model-name, [m]]",  # values that are not strings
        "command: [5, {--model: m}, --model=]",  # items that are not strings; an empty value
        "command: [--model, --served-model-name, --model=-x]",  # a flag is not a name
        "command: [--model, '${MODEL}', --model, /models/m, --model, 'org/m x']",  # not names
        "command: [--models, m, --model-name, m, -model, m, --served-model-name-x=m]",
        "command: {--model: m}",  # neither a string nor a list
        "entrypoint: 5",
        'command: "--mod\'el org/m"',  # an unclosed quote: shlex cannot split it
        'command: "--model-x \'org/m"',  # the same, where the text search finds no flag
        "environment: [MODEL_NAME, MODEL_NAME=, MODEL_NAMES=m, model_name=m, 5, [MODEL_NAME, m]]",
        "environment: {MODEL_NAME: 5, MODEL_NAMES: m}",
        "environment:\n  MODEL_NAME: ${MODEL}",  # what the host sets: not measured
        "environment: {MODEL_NAME: null}",
        "environment: 'MODEL_NAME: m'",  # neither a list nor a mapping
        "models: [--model, org/m]",  # not a key that is read
    ],
)
def test_what_is_not_a_model_name(lines: str) -> None:
    facts = parse_compose(_vllm(lines))
    assert (facts.images, facts.model_names, facts.error) == ((_image("vllm", "x"),), (), None)


def test_model_names_of_every_service_in_order_once_each() -> None:
    text = _manifest(
        "services:\n"
        "  proxy: {image: x, environment: {MODEL_NAME: org/a}}\n"
        "  bare: x\n"
        "  built: {build: .}\n"
        "  vllm:\n"
        "    image: x\n"
        "    environment: {MODEL_NAME: org/e}\n"
        "    command: [--served-model-name, org/c, --model, org/a]\n"
        "    entrypoint: [vllm, serve, --model, org/p]\n"
        "  other: {image: x, command: [--model, org/last]}\n"
    )
    assert parse_compose(text).model_names == ("org/a", "org/p", "org/c", "org/e", "org/last")


def test_model_name_set_before_a_command_in_a_shell_string_is_read() -> None:
    text = _vllm("entrypoint: sh -c 'MODEL_NAME=org/env exec vllm serve'\ncommand: [x]")
    assert parse_compose(text).model_names == ("org/env",)
    text = _vllm("command: [sh, -c, 'MODEL_NAME=org/env vllm serve --model org/m']")
    assert parse_compose(text).model_names == ("org/env", "org/m")


@pytest.mark.parametrize(
    ("lines", "names"),
    [
        # vLLM serves under every name given to --served-model-name (nargs="+").
        ("command: --model org/m --served-model-name a b --port 8000", ("org/m", "a", "b")),
        ("command: [--served-model-name, a, b, c]", ("a", "b", "c")),
        ("command: [--served-model-name, a, '${X}', b, --model, org/m]", ("a", "b", "org/m")),
        ("command: [--served-model-name, a, 5, b]", ("a", "b")),  # 5 is no name, not an end
        ("command: [--served-model-name=a, b]", ("a",)),  # the = form takes one value
        ("command: [--model, org/m, b]", ("org/m",)),  # --model takes one
        ("command: [--served-model-name, -a, b]", ()),  # an option ends the names
    ],
)
def test_every_served_name_is_read(lines: str, names: tuple[str, ...]) -> None:
    assert parse_compose(_vllm(lines)).model_names == names


def test_a_long_list_of_served_name_flags_is_read_in_one_pass() -> None:
    # 25,000 flags, each with one name (within MAX_COMPOSE_CHARS): each argument is read once;
    # a copy of the rest of the list per flag would be 300 million steps.
    arguments = ", ".join(f"--served-model-name, m{index}" for index in range(25_000))
    facts = parse_compose(_vllm(f"command: [{arguments}]"))
    assert facts.error is None
    assert facts.model_names == tuple(f"m{index}" for index in range(25_000))


def test_a_second_served_name_binds_the_model() -> None:
    facts = parse_compose(_vllm("command: [--model, org/m, --served-model-name, alias, org/x]"))
    check = model_binding_check(facts, True, claimed="org/x", requested="x")
    assert (check.ok, check.enforced) == (True, True)
    assert check.detail == "the measured compose serves org/x (names: org/m, alias, org/x)"


# --- SGLang's --model-path, and vLLM's positional model (vllm serve MODEL) ----------------


@pytest.mark.parametrize(
    ("lines", "names"),
    [
        # SGLang: python -m sglang.launch_server (or sglang serve) --model-path NAME.
        (
            "command: python3 -m sglang.launch_server --model-path org/m --served-model-name s",
            ("org/m", "s"),
        ),
        ("command: sglang serve --model-path=org/m --port 30000", ("org/m",)),
        # Only the arguments read these (a comma between flag and value) ...
        (
            "command: [python3, -m, sglang.launch_server, --model-path, org/m, --tp, '2']",
            ("org/m",),
        ),
        ("command: ['--model-path=org/m']", ("org/m",)),
        # ... and only the text pattern this one (an unclosed quote: shlex cannot split it).
        ('command: "--model-path org/m \'"', ("org/m",)),
        ("command: [--model-path, org/m, b]", ("org/m",)),  # one value, like --model
    ],
)
def test_sglangs_model_path_is_read_like_model(lines: str, names: tuple[str, ...]) -> None:
    assert parse_compose(_vllm(lines)).model_names == names


@pytest.mark.parametrize(
    "lines",
    [
        "command: [--model-path, /models/m, --model-path, '${MODEL}']",  # not names
        "command: --model-paths org/m --model-path-x org/m --model-pat org/m",
        # A flag that ends in -model-path is another flag (the draft model).
        "command: --speculative-draft-model-path org/d --draft-model-path=org/d",
        "command: [--speculative-draft-model-path, org/d, -model-path, org/d]",
    ],
)
def test_what_model_path_does_not_name(lines: str) -> None:
    assert parse_compose(_vllm(lines)).model_names == ()


@pytest.mark.parametrize(
    "lines",
    [
        "command: python -m sglang.launch_server --model-path {model} --port 30000",
        "command: [sglang, serve, --model-path, {model}]",
    ],
)
def test_model_path_binds_the_model_or_fails_the_binding(lines: str) -> None:
    served = parse_compose(_vllm(lines.format(model="org/served")))
    assert _binding(served) == (
        True,
        True,
        "the measured compose serves org/served (names: org/served)",
    )
    other = parse_compose(_vllm(lines.format(model="org/other")))
    assert _binding(other) == (
        False,
        True,
        "the measured compose names org/other, not 'org/served'",
    )


@pytest.mark.parametrize(
    ("lines", "names"),
    [
        # The program, serve, then the model: as a string compose splits, or a list.
        ("command: vllm serve org/m --port 8000", ("org/m",)),
        ("command: vllm serve org/m", ("org/m",)),
        ("command: /usr/local/bin/vllm serve org/m --port 8000", ("org/m",)),
        ('command: ["vllm", "serve", "org/m", "--port", "8000"]', ("org/m",)),
        ("command:\n  - vllm\n  - serve\n  - 'org/m:rev'", ("org/m:rev",)),
        # Compose runs the command after the entrypoint: the head spans the two.
        ('entrypoint: ["vllm", "serve"]\ncommand: ["org/m", "--port", "8000"]', ("org/m",)),
        ("entrypoint: vllm\ncommand: serve org/m", ("org/m",)),
        ("entrypoint: [vllm, serve, org/m, --port]\ncommand: ['8000']", ("org/m",)),
        ("entrypoint: []\ncommand: [vllm, serve, org/m]", ("org/m",)),
        # Python running vLLM's CLI module.
        ("command: python3 -m vllm.entrypoints.cli.main serve org/m --port 8000", ("org/m",)),
        ("command: python -m vllm.entrypoints.cli.main serve org/m", ("org/m",)),
        (
            "command: [/opt/venv/bin/python3, -m, vllm.entrypoints.cli.main, serve, org/m]",
            ("org/m",),
        ),
        (
            "entrypoint: [/usr/bin/python, -m]\ncommand: [vllm.entrypoints.cli.main, serve, org/m]",
            ("org/m",),
        ),
        # In the script of sh -c or bash -c (-ec, -lc, -xc), in any of its commands.
        ('command: sh -c "vllm serve org/m --port 8000"', ("org/m",)),
        ("command: [sh, -c, vllm serve org/m]", ("org/m",)),
        ("command: [/bin/sh, -ec, 'exec vllm serve org/m']", ("org/m",)),
        (
            "command: [bash, -lc, 'pip install x && HF_HOME=/d X_1=a exec vllm serve org/m']",
            ("org/m",),
        ),
        ("entrypoint: [/bin/bash, -xc]\ncommand: ['X=1 vllm serve org/m --port 8000']", ("org/m",)),
        ("entrypoint: [sh]\ncommand: [-c, 'a; vllm serve org/m']", ("org/m",)),
        (
            'command: [sh, -c, "a;vllm serve org/a\\nb | vllm serve org/b &\\n(vllm serve org/c)"]',
            ("org/a", "org/b", "org/c"),
        ),
        ("command: [sh, -c, 'a || vllm serve org/a& vllm serve org/b']", ("org/a", "org/b")),
        ("command: [sh, -c, 'x 2>&1 >|log; vllm serve org/m 2>&1']", ("org/m",)),
        ('command: [sh, -c, "\\t vllm\\tserve  org/m  "]', ("org/m",)),
        ("command: [sh, -c, 'python3 -m vllm.entrypoints.cli.main serve org/m']", ("org/m",)),
        # The plain part of a script ends at a quote, $, #...: a model before it is read.
        ("command: [sh, -c, \"vllm serve org/m --chat-template '{{x}}'\"]", ("org/m",)),
        ("command: [sh, -c, 'vllm serve org/m --port $$PORT']", ("org/m",)),
        ("command: [sh, -c, 'vllm serve org/m # the model']", ("org/m",)),
        ("command: [sh, -c, 'vllm serve org/m < /dev/null']", ("org/m",)),
        # The head's model comes first, then the flags, then the environment.
        (
            "command: vllm serve org/m --served-model-name alias\nenvironment: [MODEL_NAME=org/e]",
            ("org/m", "alias", "org/e"),
        ),
        ("command: [sh, -c, 'vllm serve org/m --served-model-name org/m']", ("org/m",)),
    ],
)
def test_the_model_vllm_serve_is_given_is_read(lines: str, names: tuple[str, ...]) -> None:
    assert parse_compose(_vllm(lines)) == ComposeFacts("t", (_image("vllm", "x"),), names, None)


@pytest.mark.parametrize(
    "lines",
    [
        # An option before the model: its value may be the next word (a tokenizer, a path).
        "command: vllm serve --port 8000 org/m",
        "command: vllm serve --tokenizer org/m org/x",
        "command: [vllm, serve, --help]",
        "entrypoint: [vllm, serve, --port]\ncommand: [org/m]",
        # No model, or no name.
        "command: [vllm, serve]",
        "command: vllm serve",
        "command: [vllm, serve, '${MODEL}']",
        "command: vllm serve /models/m",
        "command: vllm serve org/m${SUFFIX}",
        "command: [vllm, serve, 5]",
        "command: [vllm, serve, [org/m]]",
        # Not vLLM's serve, or not vLLM.
        "command: vllm chat org/m",
        "command: vllm bench serve org/m",
        "command: [vllm, 5, org/m]",
        "command: vllm-proxy serve org/m",
        "command: myvllm serve org/m",
        "command: /opt/myvllm serve org/m",
        "command: /opt/vllm/serve org/m",
        "command: [5, serve, org/m]",
        "command: [[vllm], serve, org/m]",
        # vllm not at the head: an argument of another program, or a word compose does not
        # treat as a shell would (no shell runs a string command).
        "command: echo vllm serve org/m",
        "command: [env, X=1, vllm, serve, org/m]",
        "command: X=1 vllm serve org/m",
        "command: exec vllm serve org/m",
        "command: true && vllm serve org/m",
        # The image's entrypoint is not in the compose: a bare model names nothing.
        "command: [org/m, --port, '8000']",
        "command: serve org/m",
        # Python, but not vLLM's CLI module, or not run with -m.
        "command: python3 -m vllm.entrypoints.openai.api_server serve org/m",
        "command: python3 -m vllm serve org/m",
        "command: python3 vllm.entrypoints.cli.main serve org/m",
        "command: python3.12 -m vllm.entrypoints.cli.main serve org/m",
        "command: node -m vllm.entrypoints.cli.main serve org/m",
        "command: python3 -m vllm.entrypoints.cli.main org/m",
        "command: [python3, -m, vllm.entrypoints.cli.main, serve]",
        "command: [python3, [-m], vllm.entrypoints.cli.main, serve, org/m]",
        # Not a script a shell runs: another shell, another option, no script.
        "command: [zsh, -c, vllm serve org/m]",
        "command: [sh, -x, vllm serve org/m]",
        "command: [sh, -e, -c, vllm serve org/m]",
        "command: [sh, vllm serve org/m]",
        "command: [sh, -c]",
        "command: [sh, [-c], vllm serve org/m]",
        "command: [sh, -c, [vllm serve org/m]]",
        "command: [sh, -c, 5]",
        # In a script: not at the head of a command.
        "command: [sh, -c, 'echo vllm serve org/m']",
        "command: [sh, -c, 'then vllm serve org/m']",
        "command: [sh, -c, 'exec X=1 vllm serve org/m']",
        "command: [sh, -c, 'exec exec vllm serve org/m']",
        "command: [sh, -c, 'x >&vllm serve org/m']",
        "command: [sh, -c, 'x >|vllm serve org/m']",
        "command: [sh, -c, '1X=1 vllm serve org/m']",
        # In a script: past its plain part (quoting, escapes, expansions, here-documents and
        # comments change what the words are), or a word that touches it.
        "command: [sh, -c, \"echo 'a; vllm serve org/m'\"]",
        "command: [sh, -c, 'echo \"a; vllm serve org/m\"']",
        "command: [sh, -c, 'echo a\\; vllm serve org/m']",
        "command: [sh, -c, 'echo `a; vllm serve org/m`']",
        "command: [sh, -c, 'echo $$(a; vllm serve org/m)']",
        "command: [sh, -c, 'cat <<EOF; vllm serve org/m']",
        "command: [sh, -c, '# a; vllm serve org/m']",
        "command: [sh, -c, \"vllm serve 'org/m'\"]",
        "command: [sh, -c, \"vllm serve org/m'x'\"]",
        "command: [sh, -c, 'vllm serve org/m$$X']",
        "command: [sh, -c, 'vllm serve org/m\\\\']",
        "command: [sh, -c, 'vllm serve org/m#x']",
        "command: [sh, -c, 'vllm serve org/m<x']",
        'command: [sh, -c, "vllm serve org/m\\r"]',
        # A script in a script is not read.
        "command: [sh, -c, \"bash -c 'vllm serve org/m'\"]",
        "command: [sh, -c, 'bash -c vllm serve org/m']",
    ],
)
def test_what_vllm_serve_does_not_name(lines: str) -> None:
    facts = parse_compose(_vllm(lines))
    assert (facts.images, facts.model_names, facts.error) == ((_image("vllm", "x"),), (), None)


@pytest.mark.parametrize(
    "lines",
    [
        "command: vllm serve {model} --port 8000",
        "entrypoint: [vllm, serve]\ncommand: [{model}]",
        "command: python3 -m vllm.entrypoints.cli.main serve {model}",
        "command: [bash, -c, 'pip install x && exec vllm serve {model}']",
    ],
)
def test_vllm_serve_binds_the_model_or_fails_the_binding(lines: str) -> None:
    # Before, each was "nothing measured names the served model" (not enforced).
    served = parse_compose(_vllm(lines.format(model="org/served")))
    assert _binding(served) == (
        True,
        True,
        "the measured compose serves org/served (names: org/served)",
    )
    other = parse_compose(_vllm(lines.format(model="org/other")))
    assert _binding(other) == (
        False,
        True,
        "the measured compose names org/other, not 'org/served'",
    )


def test_a_hostile_compose_of_shell_scripts_is_read_in_one_pass() -> None:
    # 3000 services run one shared script of 30,000 commands, each after its own (unshared)
    # [sh, -c]: the script is read once, 30,000 steps; once per service, 90 million.
    script = "; ".join(f"vllm serve m{index}" for index in range(30_000))
    services = "".join(
        f"  s{index}: {{image: x, entrypoint: [sh, -c], command: *script}}\n"
        for index in range(3000)
    )
    facts = parse_compose(_manifest(f"x: &script ['{script}']\nservices:\n{services}"))
    assert facts.error is None
    assert facts.model_names == tuple(f"m{index}" for index in range(30_000))
    # 200,000 assignments before the program: each word is looked at once.
    text = _vllm(f"command: [sh, -c, '{'X=1 ' * 200_000}exec vllm serve org/m']")
    assert parse_compose(text).model_names == ("org/m",)


def test_a_model_word_several_services_share_is_read_once() -> None:
    # 8000 services, each with its own [vllm, serve], share a 400,000-character model word:
    # tested once, not once per service (3.2 billion characters).
    model = "m" * 400_000
    services = "".join(
        f"  s{index}: {{image: x, entrypoint: [vllm, serve], command: *model}}\n"
        for index in range(8000)
    )
    facts = parse_compose(_manifest(f"x: &model [{model}]\nservices:\n{services}"))
    assert (len(facts.images), facts.model_names, facts.error) == (8000, (model,), None)
    # The same word is a model after vllm serve and a script after sh -c: each is read.
    text = _manifest(
        "x: &m [org/m]\nservices:\n"
        "  a: {image: x, entrypoint: [sh, -c], command: *m}\n"
        "  b: {image: x, entrypoint: [vllm, serve], command: *m}\n"
    )
    assert parse_compose(text).model_names == ("org/m",)


def test_the_entrypoint_comes_before_the_command() -> None:
    text = _vllm("command: [--model, org/list]\nentrypoint: sh -c 'vllm serve --model org/sh'")
    assert parse_compose(text).model_names == ("org/sh", "org/list")


def test_a_string_command_is_split_only_up_to_its_limit() -> None:
    # Only the shell's split reads this flag (quotes inside it); the text search does not.
    command = '--mod"el" org/m'
    assert parse_compose(_vllm(f"command: '{command}'")).model_names == ("org/m",)
    padded = command + " " * (MAX_SPLIT_CHARS - len(command))
    assert parse_compose(_vllm(f"command: '{padded}'")).model_names == ("org/m",)
    assert parse_compose(_vllm(f"command: '{padded} '")).model_names == ()
    assert MAX_SPLIT_CHARS == 4096


def test_a_value_several_services_share_is_read_once() -> None:
    # 3000 services share one command of 60,000 arguments through an alias: read once, that is
    # 60,000 steps; read for each service, 180 million (the mutation run's time limit stops it).
    arguments = ", ".join(["a"] * 60_000)
    services = "".join(f"  s{index}: {{image: x, command: *args}}\n" for index in range(3000))
    text = f"x-args: &args [--model, org/m, {arguments}]\nservices:\n{services}"
    facts = parse_compose(_manifest(text))
    assert (len(facts.images), facts.model_names, facts.error) == (3000, ("org/m",), None)


def test_list_forms_bind_the_model_or_fail_the_binding() -> None:
    # Before the YAML was read, both were "nothing measured names the served model" (not
    # enforced); now they are checked like any other name, and a mismatch is enforced.
    served = parse_compose(_vllm("command: [--model, org/box, --served-model-name, org/served]"))
    assert _binding(served) == (
        True,
        True,
        "the measured compose serves org/served (names: org/box, org/served)",
    )
    other = parse_compose(
        _vllm("environment:\n  MODEL_NAME: other/m\ncommand:\n  - --model\n  - other/x")
    )
    assert _binding(other) == (
        False,
        True,
        "the measured compose names other/x, other/m, not 'org/served'",
    )


@pytest.mark.parametrize(
    "text",
    [
        "- --model\n- org/m\n",
        "--model org/m\n",
        "services: [--model, org/m]\n",
        "services:\n  - command: [--model, org/m]\n",
        "x-vllm:\n  command: [--model, org/m]\nservices: {}\n",
    ],
)
def test_yaml_that_is_not_a_compose_names_no_model(text: str) -> None:
    assert parse_compose(_manifest(text)) == ComposeFacts(
        "t", (), (), "docker_compose_file has no services"
    )


def test_deep_nesting_in_a_command_never_raises() -> None:
    for depth in (500, 5000):
        text = _vllm("command: " + "[" * depth + "--model, org/m" + "]" * depth)
        facts = parse_compose(text)
        assert facts.model_names == ()
    assert parse_compose(_vllm("command: " + "[" * 5000)).error == (
        "docker_compose_file is not valid YAML"
    )


def test_compose_facts_as_a_dict() -> None:
    facts = ComposeFacts("t", (_image("a", "x/a:1"), _image("b", f"x@{DIGEST}", True)), ("m",), "e")
    assert facts.to_dict() == {
        "name": "t",
        "images": [
            {"service": "a", "image": "x/a:1", "pinned": False},
            {"service": "b", "image": f"x@{DIGEST}", "pinned": True},
        ],
        "model_names": ["m"],
        "error": "e",
    }
    assert facts.unpinned == (_image("a", "x/a:1"),)


def test_app_compose_of_reads_tcb_info_first_then_info() -> None:
    assert app_compose_of(None) is None
    assert app_compose_of({}) is None
    assert app_compose_of({"tcb_info": {"app_compose": "tcb"}, "app_compose": "top"}) == "tcb"
    assert app_compose_of({"tcb_info": {}, "app_compose": "top"}) == "top"
    assert app_compose_of({"tcb_info": "not a mapping", "app_compose": "top"}) == "top"
    assert app_compose_of({"app_compose": "top"}) == "top"
    assert app_compose_of({"tcb_info": {"app_compose": {"a": 1}}, "app_compose": "top"}) is None
    assert app_compose_of({"app_compose": ["top"]}) is None


# --- compose_images_pinned, exactly -------------------------------------------------------


def _images_check(
    facts: ComposeFacts | None,
    bound: bool = True,
    *,
    enforced: bool = True,
    allow_unpinned: bool = False,
) -> tuple[bool | None, bool, str]:
    check = compose_images_check(facts, bound, enforced=enforced, allow_unpinned=allow_unpinned)
    assert (check.code, check.tier) == ("compose_images_pinned", "software")
    return check.ok, check.enforced, check.detail


PINNED = (_image("a", f"x/a@{DIGEST}", True), _image("b", f"x/b@{DIGEST}", True))
SET_IT = (
    "; set attestation.allow_unpinned_images = true to accept a compose that does not fix its code"
)


def test_images_check_without_a_manifest_or_binding() -> None:
    assert _images_check(None) == (
        None,
        False,
        "the report shows no app_compose: its images are unknown",
    )
    facts = ComposeFacts("t", PINNED, (), None)
    assert _images_check(facts, bound=False) == (
        False,
        False,
        "not evaluated: compose_hash_binding failed",
    )


@pytest.mark.parametrize("enforced", [True, False])
def test_images_check_of_an_unparsed_manifest(enforced: bool) -> None:
    facts = ComposeFacts("t", (), (), "docker_compose_file is not valid YAML")
    assert _images_check(facts, enforced=enforced) == (
        False,
        enforced,
        "docker_compose_file is not valid YAML",
    )


def test_images_check_of_pinned_images() -> None:
    assert _images_check(ComposeFacts("t", PINNED, (), None)) == (
        True,
        True,
        "2 of 2 images pinned by digest",
    )
    assert _images_check(ComposeFacts("t", (), (), None)) == (
        True,
        True,
        "0 of 0 images pinned by digest",
    )
    # Pinned, but the manifest pulls in files that were not read: not a pass.
    facts = ComposeFacts("t", PINNED, (), "not followed: include")
    assert _images_check(facts) == (
        False,
        True,
        "2 of 2 images pinned by digest (not followed: include)",
    )


@pytest.mark.parametrize(
    ("unpinned", "shown"),
    [
        (1, "u0: x/u0:1"),
        (6, "u0: x/u0:1, u1: build, u2: x/u2:1, u3: build, u4: x/u4:1, u5: build"),
        (7, "u0: x/u0:1, u1: build, u2: x/u2:1, u3: build, u4: x/u4:1, u5: build and 1 more"),
        (9, "u0: x/u0:1, u1: build, u2: x/u2:1, u3: build, u4: x/u4:1, u5: build and 3 more"),
    ],
)
@pytest.mark.parametrize("allow_unpinned", [False, True])
def test_images_check_names_the_unpinned_ones(
    unpinned: int, shown: str, allow_unpinned: bool
) -> None:
    loose = tuple(
        _image(f"u{index}", None if index % 2 else f"x/u{index}:1") for index in range(unpinned)
    )
    facts = ComposeFacts("t", (*PINNED, *loose), (), None)
    note = "; allowed by attestation.allow_unpinned_images" if allow_unpinned else SET_IT
    count = f"2 of {2 + unpinned} images pinned by digest"
    expected_detail = f"{count}; not pinned: {shown}{note}"
    assert _images_check(facts, allow_unpinned=allow_unpinned) == (
        False,
        not allow_unpinned,
        expected_detail,
    )
    assert _images_check(facts, enforced=False, allow_unpinned=allow_unpinned) == (
        False,
        False,
        expected_detail,
    )


# --- model_binding, exactly --------------------------------------------------------------

UNBOUND_NOTE = "nothing measured names the served model: model_match rests on Venice's "


def _binding(
    facts: ComposeFacts | None,
    bound: bool = True,
    *,
    claimed: str | None = "org/served",
    requested: str = "e2ee-model",
    deployed: tuple[str, ...] = (),
) -> tuple[bool | None, bool, str]:
    check = model_binding_check(
        facts, bound, claimed=claimed, requested=requested, deployed=deployed
    )
    assert (check.code, check.tier) == ("model_binding", "software")
    return check.ok, check.enforced, check.detail


def test_binding_where_nothing_measured_names_a_model() -> None:
    named = ComposeFacts("t", PINNED, ("org/served",), None)
    expected = (None, False, UNBOUND_NOTE + "unauthenticated label (upstream model org/served)")
    assert _binding(None) == expected
    assert _binding(named, bound=False) == expected  # the names of an unbound manifest: none
    assert _binding(ComposeFacts("t", PINNED, (), None)) == expected
    assert _binding(None, claimed=None) == (
        None,
        False,
        UNBOUND_NOTE + "unauthenticated label (upstream model not stated)",
    )
    assert _binding(None, deployed=("a.yaml", "b.yaml")) == (
        None,
        False,
        UNBOUND_NOTE + "unauthenticated label (upstream model org/served); the measured "
        "deployment ran a.yaml, b.yaml",
    )


def test_binding_matches_the_claimed_or_requested_model_in_any_case() -> None:
    names = ("other/a", "ORG/Served", "e2ee-model")
    facts = ComposeFacts("t", PINNED, names, None)
    shown = "other/a, ORG/Served, e2ee-model"
    assert _binding(facts) == (
        True,
        True,
        f"the measured compose serves ORG/Served (names: {shown})",
    )
    assert _binding(facts, claimed=None) == (
        True,
        True,
        f"the measured compose serves e2ee-model (names: {shown})",
    )


def test_binding_fails_when_the_measured_compose_names_other_models() -> None:
    names = tuple(f"other/m{index}" for index in range(7))
    facts = ComposeFacts("t", PINNED, names, None)
    shown = ", ".join(names[:6])
    assert _binding(facts) == (False, True, f"the measured compose names {shown}, not 'org/served'")
    assert _binding(facts, claimed=None) == (
        False,
        True,
        f"the measured compose names {shown}, not 'e2ee-model'",
    )
    # A match beyond the sixth name still binds; only the shown list is cut.
    facts = ComposeFacts("t", PINNED, (*names, "org/served"), None)
    assert _binding(facts) == (
        True,
        True,
        f"the measured compose serves org/served (names: {shown})",
    )
