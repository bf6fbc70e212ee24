"""What the measured compose runs: its images (digest-pinned or not) and the models it names.

Input: dstack's ``app_compose`` (a JSON string; ``info.tcb_info.app_compose`` on NEAR and Phala
reports, ``attestation.evidence.app_compose`` where an aci gateway publishes one) whose
``docker_compose_file`` member is a Docker Compose YAML document. It is authenticated only when
``compose_hash_binding`` passed with the manifest present (sha256(app_compose) is the compose
hash the quote binds) and DCAP passed.

Checks (tier ``software``):

``compose_images_pinned``
    every service's ``image`` is pinned by digest (``name@sha256:<64 hex>`` or ``@sha512``). A
    tag (``:1.2``, ``:latest``) can point at other content later without changing any
    measurement, and a ``build:`` service is built at deploy time from unmeasured sources; both
    are flagged by name. Enforced with the software tier unless
    ``attestation.allow_unpinned_images``. No manifest in the report: ``ok=None`` (nothing to
    check; the report says the manifest was not shown).
``model_binding``
    the model names the measured compose configures (the model of ``vllm serve MODEL``, vLLM's
    ``--served-model-name`` and ``--model``, SGLang's ``--model-path``, ``MODEL_NAME``) include
    the model Venice says it serves (``upstream_model`` /
    ``model_name``) or the requested id. Where they do, the binding passes; where they name
    other models only, it fails (enforced). Where nothing measured names a model (NEAR's
    compose-manager deploys the model from a repository at run time; the aci gateway serves
    many), ``ok=None`` and not enforced: the detail says that ``model_match`` rests on Venice's
    unauthenticated label alone.

The model names come from the YAML alone, and only from what a service runs: each service's
``vllm serve MODEL`` (below), then its ``entrypoint``, ``command`` and ``environment``, each
name once, in that order. A comment, a label or any other key names nothing (a
``# --model org/m`` line would otherwise make the check say the compose serves ``org/m``). In a
command or entrypoint, a string or each string item of a list is read two ways for flags:

- the text pattern: ``--model NAME``, ``--model-path NAME``, ``--served-model-name=NAME``
  (spaces, quotes, backslashes or ``=`` between) and ``MODEL_NAME=NAME``, wherever they stand
  in the string, so a command inside ``sh -c "..."`` or after ``MODEL_NAME=x`` is read; the
  name must end where a shell word ends (a space, a quote, a backslash, ``; & | ) , ]`` or the
  end): ``--model org/m${SUFFIX}`` names nothing, since the host completes it at deploy time;
- the arguments: a list (the item after ``--model`` or ``--model-path``, every item after
  ``--served-model-name`` up to the next option, or one ``--flag=NAME`` item, in flow ``[...]``
  or block ``- ...`` form, quoted or not), or a string split as a shell would (``shlex``; one
  over ``MAX_SPLIT_CHARS`` is left to the text pattern). This reads what the pattern cannot
  see: a comma or a new ``- `` item between flag and value, or quotes the shell removes.

``--model`` and ``--served-model-name`` are vLLM's (``vllm serve``, or ``python -m
vllm.entrypoints.openai.api_server``), ``--model-path`` and ``--served-model-name`` SGLang's
(``python -m sglang.launch_server``, ``sglang serve``).

vLLM's current CLI takes the model as a positional argument, ``vllm serve MODEL [options]``. It
is read from the words a service runs, its entrypoint's then its command's (compose runs the
command after the entrypoint, so ``entrypoint: [vllm, serve]`` with ``command: [org/m, ...]`` is
read), where they start with the program ``vllm`` (or a path ending ``/vllm``), or ``python`` /
``python3`` (or a path to one) ``-m vllm.entrypoints.cli.main``, then ``serve``, then the model.
Where they start ``sh -c SCRIPT`` or ``bash -c SCRIPT`` (``-c``, ``-ec``, ``-lc`` or ``-xc``),
the script is read: each of its commands (between ``;``, ``&&``, ``||``, ``|``, ``&``,
parentheses and new lines), after ``NAME=value`` assignments and an ``exec``, that starts so.
Deliberately NOT read, because which word is the model cannot be told for sure without vLLM's
parser or a shell (no name then: ``model_binding`` is not evaluated, never wrongly passed):

- an option before the model (``vllm serve --port 8000 org/m``): whether an option takes a
  value is vLLM's to say, and the next word may be that value (``--tokenizer org/t org/m``);
- ``vllm`` anywhere but at the head of a command (``echo vllm serve org/m``, ``env X=1 vllm``,
  ``then vllm``, ``{ vllm``), or a program merely containing it (``vllm-proxy``, ``myvllm``);
- a script past its plain part: from the first quote, backslash, ``$``, backtick, ``<`` or
  ``#`` on (quoting, escapes, expansions, here-documents and comments change what the words
  are), and a word that touches that character (``org/m$X``, ``org/m"x"``) is no name;
- a script inside a script (``sh -c "bash -c '...'"``), a string command over
  ``MAX_SPLIT_CHARS`` (not split), and a model after ``vllm serve`` in the image's own
  entrypoint, which the compose does not show (``command: [org/m]`` alone names nothing).

Which commands actually run (a condition, ``false && vllm serve x``) is not judged, like the
flags: a name in what a service runs is a name the compose configures.

The ``environment`` is a list (``MODEL_NAME=NAME``) or a mapping (``MODEL_NAME: NAME``). A
docker_compose_file that is not valid YAML, or no mapping with ``services``, names no model
(it could not have been deployed as it stands).

Either way a name starts with a letter or digit and holds only letters, digits and ``_.-/:``
(the text pattern takes the longest such run, the arguments a whole item or nothing), so
``${MODEL}`` (set by the host, unmeasured) or a path ``/models/x`` names nothing.

Bounds: an app_compose over ``MAX_COMPOSE_CHARS`` is not read, and its docker_compose_file is
loaded with PyYAML's safe loader (libyaml's where built, which also bounds nesting). An alias
shares the node it names (nothing is copied), so nested aliases cost no more than their text,
and a value several services share through an alias is read once; the one place where YAML
copies is a ``<<`` merge key, and a document whose merges copy more than
``MAX_MERGED_ENTRIES`` entries in all is not read (an error; its images are then unknown, and
it names no model).

Deliberately NOT done: resolving tags or digests against a registry, judging what an image
does, following ``extends`` or ``include`` (flagged as unparsed), or mapping Venice's model id
to a Hugging Face id (Venice's ``upstream_model`` claim is what is compared).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from proxy.attestation.report import TIER_SOFTWARE, CheckResult

COMPOSE_IMAGES_PINNED: Final = "compose_images_pinned"
MODEL_BINDING: Final = "model_binding"
COMPOSE_CHECK_CODES: Final = (COMPOSE_IMAGES_PINNED, MODEL_BINDING)

MAX_COMPOSE_CHARS: Final = 1_000_000
# The entries ``<<`` merge keys may copy in one document, in all (the captures merge about 30).
MAX_MERGED_ENTRIES: Final = 10_000
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$|@sha512:[0-9a-f]{128}$")
_NAME = r"[A-Za-z0-9][\w.\-/:]*"
# In the text, a name must end where a shell word ends (the end, a space, a quote, a backslash,
# ; & | ) , or ]): one that runs on into anything else (``org/m${SUFFIX}``, ``org/m*``) is
# completed at deploy time by what the host supplies, which is not measured, so it is no name.
_TEXT_NAME = r"[A-Za-z0-9][\w.\-/:]*+(?=$|[\s'\"\\;&|),\]])"
_MODEL_ARGUMENT = re.compile(
    rf"(?:--served-model-name|--model(?:-path)?)(?:=|[\s\\'\"]+)({_TEXT_NAME})"
    rf"|\bMODEL_NAME=({_TEXT_NAME})"
)
_MODEL_NAME = re.compile(_NAME)
_SERVED_NAME_FLAG: Final = "--served-model-name"
# vLLM's --model; SGLang's --model-path (``python -m sglang.launch_server``, ``sglang serve``).
_MODEL_FLAGS: Final = frozenset({"--model", "--model-path", _SERVED_NAME_FLAG})
# A string command longer than this is left to the text pattern: shlex takes time in the square
# of a token's length (a 1 MB one took 12 s), and real commands are a few hundred characters.
MAX_SPLIT_CHARS: Final = 4096
_SHELL_QUOTING = re.compile(r"['\"\\]")
_SHELL_WORD = re.compile(r"[^ \t\r\n]+")
# vLLM's own CLI, ``vllm serve MODEL``: the program is vllm, or Python running the CLI's module
# (each a name, or a path ending in /name).
_VLLM: Final = ("vllm",)
_PYTHON: Final = ("python", "python3")
_VLLM_MODULE: Final = ("-m", "vllm.entrypoints.cli.main")
# What runs a shell script: ``sh -c SCRIPT`` or bash (-c alone, or after -e, -l or -x).
_SHELL: Final = ("sh", "bash")
_SCRIPT_OPTIONS: Final = frozenset({"-c", "-ec", "-lc", "-xc"})
# Where the part of a script that is read ends: at a quote, an escape, an expansion, a
# here-document (``<<``) or a comment; past it, only a shell knows the words.
_SCRIPT_END = re.compile(r"['\"\\`$<#]")
# What ends one command of a script: ; & | ( ) or a new line (not >& or >|, redirections).
_SCRIPT_OPERATOR = re.compile(r"[;()\n]|(?<!>)[&|]")
_SCRIPT_WORD = re.compile(r"[^ \t]+")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
# What a service runs: its entrypoint, then its command. The head read is its first five words,
# the longest form: ``python -m vllm.entrypoints.cli.main serve MODEL``.
_RUNS: Final = ("entrypoint", "command")
_HEAD: Final = 5


def shell_words_unquoted(command: str) -> list[str]:
    """``shlex.split(command)`` for a command without quotes or backslashes: its runs of
    anything but shlex's whitespace (space, tab, CR, LF). A tenth of shlex's time, which was
    most of a compose's reading."""
    return _SHELL_WORD.findall(command)


@dataclass(frozen=True, slots=True)
class Image:
    """One service of the compose and what it runs."""

    service: str
    reference: str | None  # None: the service is built at deploy time (``build:``)
    pinned: bool

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "image": self.reference, "pinned": self.pinned}


@dataclass(frozen=True, slots=True)
class ComposeFacts:
    """What one app_compose says it runs."""

    name: str | None
    images: tuple[Image, ...]
    model_names: tuple[str, ...]
    error: str | None = None

    @property
    def unpinned(self) -> tuple[Image, ...]:
        return tuple(image for image in self.images if not image.pinned)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "images": [image.to_dict() for image in self.images],
            "model_names": list(self.model_names),
            "error": self.error,
        }


def app_compose_of(info: Mapping[str, Any] | None) -> str | None:
    """The app_compose string of a normalized ``info`` (None when the report has none)."""
    if not info:
        return None
    tcb = info.get("tcb_info")
    value = tcb.get("app_compose") if isinstance(tcb, Mapping) else None
    if value is None:
        value = info.get("app_compose")
    return value if isinstance(value, str) else None


def is_pinned(reference: str) -> bool:
    """True when an image reference names its content by digest."""
    return bool(_DIGEST.search(reference.strip()))


class _MergedTooMuch(yaml.YAMLError):
    """The document's ``<<`` merge keys copy more than ``MAX_MERGED_ENTRIES`` entries."""


class _MergeBudget(yaml.constructor.SafeConstructor):
    """Counts the entries that ``<<`` merge keys copy into mappings, and stops past the budget.

    An alias is otherwise free: the loader shares the node it names rather than copying it, so a
    "billion laughs" of nested aliases loads in the size of its text. A merge key is the one
    place where it copies: ``<<: *common`` puts every entry of ``common`` into the mapping, so N
    services that merge an anchor of K entries cost N x K (a 1 MB document made 16 GB of them).
    """

    merged = 0

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        own = sum(1 for key, _ in node.value if key.tag != _MERGE_TAG)
        super().flatten_mapping(node)
        self.merged += len(node.value) - own
        if self.merged > MAX_MERGED_ENTRIES:
            raise _MergedTooMuch


# libyaml's safe loader when PyYAML was built with it (its wheels are): the same documents as
# yaml.SafeLoader at about a tenth of the cost (the pure-Python parser was 3/4 of a whole
# attestation verification). libyaml bounds nesting itself (a ScannerError, not a crash). The
# merge budget goes in front of its (Python) constructor.
_SAFE_LOADER: Any = type(
    "_SafeLoader", (_MergeBudget, getattr(yaml, "CSafeLoader", yaml.SafeLoader)), {}
)


def parse_compose(app_compose: str) -> ComposeFacts:
    """Images and model names of an app_compose. Never raises: problems go in ``error``."""
    if len(app_compose) > MAX_COMPOSE_CHARS:
        return ComposeFacts(None, (), (), f"app_compose is over {MAX_COMPOSE_CHARS} characters")
    try:
        manifest = json.loads(app_compose)
    except (ValueError, RecursionError):
        return ComposeFacts(None, (), (), "app_compose is not JSON")
    if not isinstance(manifest, Mapping):
        return ComposeFacts(None, (), (), "app_compose is not a JSON object")
    name = manifest.get("name") if isinstance(manifest.get("name"), str) else None
    text = manifest.get("docker_compose_file")
    if not isinstance(text, str):
        return ComposeFacts(name, (), (), "app_compose has no docker_compose_file")
    try:
        document = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except _MergedTooMuch:
        detail = f"docker_compose_file merges over {MAX_MERGED_ENTRIES} entries with << (not read)"
        return ComposeFacts(name, (), (), detail)
    except (yaml.YAMLError, RecursionError, ValueError):
        return ComposeFacts(name, (), (), "docker_compose_file is not valid YAML")
    services = document.get("services") if isinstance(document, Mapping) else None
    if not isinstance(services, Mapping) or not services:
        return ComposeFacts(name, (), (), "docker_compose_file has no services")
    models = tuple(dict.fromkeys(_service_model_names(services)))
    images: list[Image] = []
    for service, spec in services.items():
        reference = spec.get("image") if isinstance(spec, Mapping) else None
        if isinstance(reference, str) and reference:
            images.append(Image(str(service), reference, is_pinned(reference)))
        else:
            images.append(Image(str(service), None, False))
    notes = [key for key in ("include", "extends") if key in document]
    error = f"not followed: {', '.join(notes)}" if notes else None
    return ComposeFacts(name, tuple(images), models, error)


def _pattern_names(text: str) -> list[str]:
    """The names the text pattern finds in one string, in order."""
    names: list[str] = []
    for match in _MODEL_ARGUMENT.finditer(text):
        value = (match.group(1) or match.group(2) or "").rstrip("'\",")
        if value:
            names.append(value)
    return names


def _service_model_names(services: Mapping[Any, Any]) -> list[str]:
    """The model names each service runs: ``vllm serve MODEL`` at the head of its entrypoint
    then command, then the names in its entrypoint, command and environment, in that order.

    A value that several services share through an alias is one object, and is read once; so is
    a script or a model word at the head of what they run.
    """
    names: list[str] = []
    read: set[int] = set()
    arguments: dict[int, list[Any]] = {}  # each entrypoint's and command's arguments, split once
    heads: set[tuple[int, bool]] = set()  # the scripts (True) and model words read at a head
    for spec in services.values():
        if not isinstance(spec, Mapping):
            continue
        entrypoint, command = (_arguments_of(spec.get(key), arguments) for key in _RUNS)
        # What the service runs: its entrypoint, then its command (compose joins them).
        names += _head_names([*entrypoint[:_HEAD], *command[:_HEAD]][:_HEAD], heads)
        for key in ("entrypoint", "command", "environment"):
            value = spec.get(key)
            if id(value) in read:
                continue
            read.add(id(value))
            if key == "environment":
                names += _environment_names(value)
            else:
                names += _command_names(value, arguments[id(value)])
    return names


def _arguments_of(value: object, arguments: dict[int, list[Any]]) -> list[Any]:
    """A command's or entrypoint's arguments: a list as it is, a string split as a shell would
    (each split once: ``arguments`` keeps them by identity), anything else none."""
    if id(value) not in arguments:
        if isinstance(value, str):
            arguments[id(value)] = _shell_split(value)
        else:
            arguments[id(value)] = value if isinstance(value, list) else []
    return arguments[id(value)]


def _head_names(head: list[Any], read: set[tuple[int, bool]]) -> list[str]:
    """The model of ``vllm serve MODEL`` at the head of what a service runs, or in the script of
    ``sh -c SCRIPT`` there. Each script, and each model word, is read once (by identity, in
    ``read``): the words before it are cheap to test, but it may be a megabyte that thousands
    of services share."""
    script = (
        len(head) >= 3
        and _is_program(head[0], _SHELL)
        and isinstance(head[1], str)
        and head[1] in _SCRIPT_OPTIONS
    )
    word = head[2] if script else _model_word(head)
    if not isinstance(word, str) or (id(word), script) in read:
        return []
    read.add((id(word), script))
    return _script_names(word) if script else _model_name(word)


def _is_program(word: object, programs: tuple[str, ...]) -> bool:
    """Is this word one of these programs, by name or by a path ending in ``/name``? In constant
    time (no scan of a long word)."""
    if not isinstance(word, str):
        return False
    return word in programs or word.endswith(tuple(f"/{program}" for program in programs))


def _model_word(words: list[Any]) -> object:
    """The word after ``serve`` where the words start ``vllm serve`` (or ``python -m
    vllm.entrypoints.cli.main serve``): vLLM's first positional argument, the model, when it is
    right after ``serve``. An option first ends the reading (None): which options take a value
    is vLLM's to say, and the word after one may be its value (``--tokenizer org/t``)."""
    program = words[0] if words else None
    if _is_program(program, _VLLM):
        rest = words[1:]
    elif _is_program(program, _PYTHON) and tuple(words[1:3]) == _VLLM_MODULE:
        rest = words[3:]
    else:
        return None
    return rest[1] if len(rest) > 1 and rest[0] == "serve" else None


def _model_name(word: str) -> list[str]:
    return [word] if _MODEL_NAME.fullmatch(word) else []


def _script_names(script: str) -> list[str]:
    """``vllm serve MODEL`` in a shell script: in each of its commands (between ``;``, ``&&``,
    ``||``, ``|``, ``&``, parentheses and new lines), after any ``NAME=value`` assignments and an
    ``exec``. Only the script's plain part is read: up to its first quote, backslash, ``$``,
    backtick, ``<`` or ``#``, which is kept so that a word it touches is no name."""
    end = _SCRIPT_END.search(script)
    plain = script if end is None else script[: end.end()]
    names: list[str] = []
    for command in _SCRIPT_OPERATOR.split(plain):
        words = _SCRIPT_WORD.findall(command)
        start = 0
        while start < len(words) and _ASSIGNMENT.match(words[start]):
            start += 1
        if words[start : start + 1] == ["exec"]:
            start += 1
        word = _model_word(words[start : start + _HEAD])
        names += _model_name(word) if isinstance(word, str) else []
    return names


def _command_names(command: object, arguments: list[Any]) -> list[str]:
    """The text pattern's names in a command's strings, then ``--model NAME``,
    ``--served-model-name NAME`` or ``--flag=NAME`` in its ``arguments``: the list, or the string
    split as a shell would (``shlex``)."""
    strings = [command] if isinstance(command, str) else arguments
    names = [name for item in strings if isinstance(item, str) for name in _pattern_names(item)]
    return names + _argument_names(arguments)


def _shell_split(command: str) -> list[str]:
    """The command's words as a shell splits them; none when it is over ``MAX_SPLIT_CHARS`` or
    has an unclosed quote (the text pattern has read it)."""
    if len(command) > MAX_SPLIT_CHARS:
        return []
    if _SHELL_QUOTING.search(command) is None:
        return shell_words_unquoted(command)
    try:
        return shlex.split(command)
    except ValueError:
        return []


def _argument_names(arguments: list[Any]) -> list[str]:
    """The names a model flag gives: the value of ``--flag=value``; else the argument after
    ``--model``, and every argument after ``--served-model-name`` up to the next option (vLLM
    takes one or more served names, ``nargs="+"``). Values that are not names are skipped."""
    names = []
    for index, argument in enumerate(arguments):
        if not isinstance(argument, str):
            continue
        flag, equals, value = argument.partition("=")
        if flag not in _MODEL_FLAGS:
            continue
        if equals:
            candidates: list[Any] = [value]
        elif flag == _SERVED_NAME_FLAG:
            # Up to the next option, which ends this run: each argument is looked at once in
            # all (a slice of the rest per flag would be quadratic in a hostile list of flags).
            end = index + 1
            while end < len(arguments) and not _is_option(arguments[end]):
                end += 1
            candidates = arguments[index + 1 : end]
        else:
            candidates = arguments[index + 1 : index + 2]
        names += [c for c in candidates if isinstance(c, str) and _MODEL_NAME.fullmatch(c)]
    return names


def _is_option(argument: Any) -> bool:
    return isinstance(argument, str) and argument.startswith("-")


def _environment_names(environment: object) -> list[str]:
    """``MODEL_NAME`` in an environment: a list of ``KEY=value`` or a mapping."""
    if isinstance(environment, Mapping):
        values = [environment.get("MODEL_NAME")]
    elif isinstance(environment, list):
        pairs = [item.partition("=") for item in environment if isinstance(item, str)]
        values = [value for key, _, value in pairs if key == "MODEL_NAME"]
    else:
        return []
    return [value for value in values if isinstance(value, str) and _MODEL_NAME.fullmatch(value)]


def _result(code: str, ok: bool | None, detail: str, enforced: bool) -> CheckResult:
    return CheckResult(code=code, ok=ok, enforced=enforced, detail=detail, tier=TIER_SOFTWARE)


def compose_images_check(
    facts: ComposeFacts | None, bound: bool, *, enforced: bool, allow_unpinned: bool
) -> CheckResult:
    """``compose_images_pinned``; ``bound`` is whether the manifest is the measured one."""
    code = COMPOSE_IMAGES_PINNED
    if facts is None:
        return _result(code, None, "the report shows no app_compose: its images are unknown", False)
    if not bound:
        # compose_hash_binding's own failure decides the verdict; this one only reports.
        return _result(code, False, "not evaluated: compose_hash_binding failed", False)
    if facts.error is not None and not facts.images:
        return _result(code, False, facts.error, enforced)
    unpinned = facts.unpinned
    count = f"{len(facts.images) - len(unpinned)} of {len(facts.images)} images pinned by digest"
    if not unpinned:
        suffix = f" ({facts.error})" if facts.error else ""
        return _result(code, facts.error is None, count + suffix, enforced)
    shown = ", ".join(
        f"{image.service}: {image.reference}" if image.reference else f"{image.service}: build"
        for image in unpinned[:6]
    )
    more = f" and {len(unpinned) - 6} more" if len(unpinned) > 6 else ""
    note = (
        "; allowed by attestation.allow_unpinned_images"
        if allow_unpinned
        else (
            "; set attestation.allow_unpinned_images = true to accept a compose that does not fix "
            "its code"
        )
    )
    detail = f"{count}; not pinned: {shown}{more}{note}"
    return _result(code, False, detail, enforced and not allow_unpinned)


def model_binding_check(
    facts: ComposeFacts | None,
    bound: bool,
    *,
    claimed: str | None,
    requested: str,
    deployed: tuple[str, ...] = (),
) -> CheckResult:
    """``model_binding``: does anything measured name the model being served?

    ``deployed`` lists authenticated deployment facts that name no model id but tell what ran
    (the compose-manager's ``compose_up`` files), shown when nothing binds the model.
    """
    code = MODEL_BINDING
    names = facts.model_names if facts is not None and bound else ()
    if not names:
        where = f"; the measured deployment ran {', '.join(deployed)}" if deployed else ""
        detail = (
            "nothing measured names the served model: model_match rests on Venice's "
            f"unauthenticated label (upstream model {claimed or 'not stated'}){where}"
        )
        return _result(code, None, detail, False)
    wanted = {value.lower() for value in (claimed, requested) if value}
    matched = [name for name in names if name.lower() in wanted]
    shown = ", ".join(names[:6])
    if matched:
        detail = f"the measured compose serves {matched[0]} (names: {shown})"
        return _result(code, True, detail, True)
    detail = f"the measured compose names {shown}, not {claimed or requested!r}"
    return _result(code, False, detail, True)
