"""The files results are saved in: one declared schema per result type (pydantic), checked on load.

A saved file is untrusted input (it may come from another version, another person, or a damaged disk), so loading
validates types, shapes and sizes in one place and answers anything else with `InvalidInputError`.

Each file type has its own `format_version`, raised only when the meaning of keys a reader knows changes (a layout,
a unit). So a file of a newer format version is refused (this version would misread it), an older one is read into
today's layout by its schema, and a file of the same version with keys this one does not know (added later, without
changing the others) loads with a warning, the keys kept and written back by `save`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InvalidInputError

FORMAT_VERSION = 1  # of an `Explanation` file

# Bounds far above any real result (a 100k-token prompt explained for 1k targets has 1e8 scores), small enough that
# a crafted file cannot ask for an absurd allocation before it is refused.
MAX_FILE_BYTES = 2 << 30
MAX_TOKENS = 1_000_000
MAX_CELLS = 200_000_000
MAX_DEPTH = 64

Pair = Annotated[list[int], Field(min_length=2, max_length=2)]
Counter = Annotated[float, Field(ge=0)]


class StrictModel(BaseModel):
    """Strict types (no "1" for 1, no true for 1.0), no NaN or inf (NaN is written as null), unknown keys kept."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)
    FORMAT_VERSION: ClassVar[int] = 0  # the format version this package writes (a whole file's schema; 0: a part)


class ExplanationFile(StrictModel):
    """The JSON of an `Explanation` (see its attributes), format version 1."""

    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION
    format_version: int = Field(default=FORMAT_VERSION, ge=1)
    scores: list[list[float]]
    input_tokens: list[str] = Field(max_length=MAX_TOKENS)
    input_offsets: list[Pair]
    input_ids: list[Annotated[int, Field(ge=-1, lt=1 << 62)]]
    target_tokens: list[str] = Field(min_length=1, max_length=MAX_TOKENS)
    target_ids: list[Annotated[int, Field(ge=0, lt=1 << 62)]] = Field(min_length=1, max_length=MAX_TOKENS)
    target_probs: list[Annotated[float, Field(ge=0, le=1 + 1e-6)] | None]
    completeness_error: list[float | None]
    text: str = Field(max_length=100_000_000)
    n_prompt_tokens: int = Field(ge=0)
    method: str
    space: str
    params: dict[str, Any] = {}
    model_name: str = ""
    library_version: str = ""
    head_scores: list[list[list[list[float | None]]]] | None = None
    extra: dict[str, Any] = {}
    cost: dict[str, Counter | None] = {}
    input_markup: list[bool] = []
    converged: bool | None = None
    answer_level: bool = False
    answer_segments: list[Pair] | None = None
    notes: list[str] = []

    @model_validator(mode="after")
    def _consistent(self) -> "ExplanationFile":
        n_targets, n_inputs = len(self.target_tokens), len(self.input_tokens)
        if n_targets * max(n_inputs, 1) > MAX_CELLS:
            raise ValueError(f"{n_targets} x {n_inputs} scores is more than the {MAX_CELLS} a file may hold")
        if len(self.scores) != n_targets or any(len(row) != n_inputs for row in self.scores):
            raise ValueError(f"scores must be {n_targets} rows (one per target token) of {n_inputs} (one per input "
                             "token)")
        for name in ("input_offsets", "input_ids"):
            if len(getattr(self, name)) != n_inputs:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n_inputs} input tokens")
        if len(self.input_markup) > n_inputs:
            raise ValueError(f"input_markup has {len(self.input_markup)} entries for {n_inputs} input tokens")
        for name in ("target_probs", "completeness_error"):
            if len(getattr(self, name)) != n_targets:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n_targets} targets")
        if not self.answer_level and len(self.target_ids) != n_targets:
            raise ValueError(f"target_ids has {len(self.target_ids)} entries for {n_targets} targets")
        if self.n_prompt_tokens > n_inputs:
            raise ValueError(f"n_prompt_tokens {self.n_prompt_tokens} is more than the {n_inputs} input tokens")
        check_spans(self.input_offsets, len(self.text), "input_offsets")
        if self.answer_segments is not None:
            bounds = [0] + [b for _, b in self.answer_segments]
            if (len(self.answer_segments) != n_targets or [a for a, _ in self.answer_segments] != bounds[:-1]
                    or bounds[-1] != len(self.target_ids) or any(b <= a for a, b in self.answer_segments)):
                raise ValueError(f"answer_segments must split the {len(self.target_ids)} answer tokens into "
                                 f"{n_targets} consecutive runs, one per row")
        if self.head_scores is not None:
            shape = array_shape(self.head_scores, 4, "head_scores")
            if shape[0] != n_targets or shape[3] != n_inputs or _product(shape) > MAX_CELLS:
                raise ValueError(f"head_scores must be (targets {n_targets}, layers, heads, inputs {n_inputs}), got "
                                 f"{tuple(shape)}")
        return self


def check_spans(spans: list[list[int]], length: int, name: str) -> None:
    """Every (start, end) inside a text of `length` characters, start <= end."""
    for start, end in spans:
        if not 0 <= start <= end <= length:
            raise ValueError(f"{name} has the span ({start}, {end}), not inside the text of {length} characters")


def array_shape(values: list, n_dims: int, name: str) -> list[int]:
    """The shape of a rectangular nested list with `n_dims` dimensions, or a ValueError naming `name`."""
    shape, level = [], [values]
    for _ in range(n_dims):
        sizes = {len(v) for v in level}
        if len(sizes) != 1:
            raise ValueError(f"{name} is ragged: its rows have different lengths")
        shape.append(sizes.pop())
        level = [item for v in level for item in v]
    return shape


def _product(shape: list[int]) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


Schema = TypeVar("Schema", bound=StrictModel)


def validated(schema: type[Schema], data: Any, kind: str) -> Schema:
    """`data` checked against `schema`, or InvalidInputError saying what is wrong: a file of a newer format version
    than this package reads is refused; unknown keys of a file of a known version are kept with a warning. `kind`
    names the class whose `save()` writes such files."""
    noun = "RAG explanation" if kind == "RagExplanation" else kind.lower()
    current = schema.FORMAT_VERSION
    hint = f"load files written by {kind}.save() (format version {current})"
    if not isinstance(data, dict):
        raise InvalidInputError(f"this is not an llm-attrib {noun}: expected a JSON object, got "
                                f"{type(data).__name__}; {hint}.")
    version = data.get("format_version")
    if type(version) is int and version > current:
        raise InvalidInputError(f"this {noun} was saved in format version {version} by a newer llm-attrib; this one "
                                f"reads format versions up to {current}: upgrade llm-attrib (pip install -U "
                                "llm-attrib) to load it.")
    check_plain(data, noun)
    try:
        model = schema.model_validate(data)
    except ValidationError as error:
        raise InvalidInputError(f"this is not an llm-attrib {noun}: {describe(error)}; {hint}.") from None
    if model.model_extra:
        warnings.warn(f"this {noun} holds keys this llm-attrib does not know (from a newer version): "
                      f"{sorted(model.model_extra)} are kept as they are", stacklevel=3)
    return model


def describe(error: ValidationError) -> str:
    """What is wrong, in one line: the missing keys, or the first problem (where, and what was expected)."""
    problems = error.errors(include_url=False, include_input=False)
    missing = [str(p["loc"][0]) for p in problems if p["type"] == "missing" and len(p["loc"]) == 1]
    if missing:
        return f"it lacks {missing}"
    first = problems[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"{where + ': ' if where else ''}{message}{more}"


def check_plain(data: Any, kind: str) -> None:
    """Refuse nesting deeper than any saved result has (a crafted file could exhaust the recursion limit) and text
    that is not Unicode (lone surrogates from JSON escapes: such text cannot be written to a page or a file)."""
    level, depth = [data], 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise InvalidInputError(f"this is not an llm-attrib {kind}: it is nested more than {MAX_DEPTH} levels "
                                    "deep.")
        nested = []
        for item in level:
            if isinstance(item, dict):
                nested += [*item.keys(), *item.values()]
            elif isinstance(item, list):
                nested += item
            elif isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidInputError(f"this is not an llm-attrib {kind}: the text {item[:40]!r} holds a lone "
                                            "surrogate (not Unicode text).") from None
        level = nested


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, allow_nan=False), encoding="utf-8")


def read_json(path: str | Path, kind: str) -> Any:
    """A saved result's JSON, or a clear error naming the class whose `save()` writes such files."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidInputError(f"{path} is {size} bytes, more than the {MAX_FILE_BYTES} a saved {kind} may be.")
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise InvalidInputError(f"cannot read {path}: {error.strerror or error}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise InvalidInputError(f"{path} is not JSON ({reason}); load files written by {kind}.save().") from None
