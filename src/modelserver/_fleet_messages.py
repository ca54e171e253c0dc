"""pydantic's validation errors as the fleet file's reader needs them: one line each, naming
the key as written (`models[2].backend`), the value found and what is allowed."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ValidationError


class KeyProblem(ValueError):
    """A cross-field problem that belongs to a specific key, not to the whole file."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


def describe(exc: ValidationError, data: dict[str, Any], root: type[BaseModel]) -> list[str]:
    """One line per problem, without repeats; `data` is what was validated against `root`."""
    problems: list[str] = []
    errors = exc.errors(include_url=False)
    for error in errors:
        if _other_union_member_fits_better(error, errors):
            continue
        ctx_error = (error.get("ctx") or {}).get("error")
        if isinstance(ctx_error, KeyProblem):
            problems.append(f"{ctx_error.key}: {ctx_error}")
            continue
        loc = [part for part in error["loc"] if not _is_union_tag(part)]
        key = _dotted(loc)
        kind = error["type"]
        if kind == "extra_forbidden":
            owner = _section_at(root, loc[:-1])
            allowed = f"; {allowed_keys(owner)}" if owner else ""
            problems.append(f"{key}: unknown key{allowed}")
        elif kind == "missing":
            problems.append(f"{key}: required key is missing")
        elif kind == "value_error":
            problems.append(f"{key or 'file'}: {ctx_error or error['msg']!s}")
        else:
            got = _value_at(data, error["loc"])
            shown = f" (got {got!r})" if got is not _MISSING else ""
            problems.append(f"{key}: {error['msg']}{shown}")
    return list(dict.fromkeys(problems))


def allowed_keys(model: type[BaseModel]) -> str:
    fields = [name for name, f in model.model_fields.items() if not f.exclude]
    return "allowed keys: " + ", ".join(fields)


_MISSING = object()


def _value_at(data: Any, loc: tuple[int | str, ...]) -> Any:
    node = data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return node


def _other_union_member_fits_better(error: Any, errors: list[Any]) -> bool:
    """`gpus = [true]` fails `str | list[int]` twice: "not a string" at `gpus` and "not an
    integer" at `gpus[0]`. Only the deeper one says what is wrong."""
    raw = tuple(error["loc"])
    if not raw or not _is_union_tag(raw[-1]):
        return False
    prefix = raw[:-1]
    return any(
        len(other["loc"]) > len(raw) and tuple(other["loc"][: len(prefix)]) == prefix
        for other in errors
    )


def _is_union_tag(part: int | str) -> bool:
    # pydantic puts the tried union member ("list[union[int,str]]", "literal['all','none']")
    # into the location; a user never wrote those.
    return isinstance(part, str) and ("[" in part or part in ("int", "str"))


def _dotted(loc: list[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _section_at(root: type[BaseModel], loc: list[int | str]) -> type[BaseModel] | None:
    """The section a location lies in (`router.breaker` -> BreakerConfig), following the
    field types from the root; None if the location leaves the sections (a dict's key)."""
    model = root
    for part in loc:
        if isinstance(part, int):
            continue  # an index into a list of sections
        field = model.model_fields.get(part)
        found = _section_in(field.annotation) if field is not None else None
        if found is None:
            return None
        model = found
    return model


def _section_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):  # list[X], X | None
        found = _section_in(arg)
        if found is not None:
            return found
    return None
