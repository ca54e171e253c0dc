"""What a fleet file's values may be: types as TOML writes them, GPUs, listening addresses.

Sections validate strictly: `true` is no port and `"5"` no timeout. Only an integer where a
number is wanted is taken as it is; a field whose type TOML cannot write (a `Path`) must say
`Annotated[Path, Strict(False)]` to be converted from a string, or the class is refused when
it is defined, not when someone's file first fails.
"""

from __future__ import annotations

import datetime
import ipaddress
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict


class Section(BaseModel):
    """One table of the fleet file: unknown keys refused, values taken only as TOML types."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, field in cls.model_fields.items():
            if not (_lax(field.metadata) or toml_can_write(field.annotation)):
                raise TypeError(
                    f"{cls.__name__}.{name}: strict validation of {field.annotation} refuses"
                    " every value a TOML file can hold; annotate it"
                    f" Annotated[{field.annotation}, Strict(False)] to convert from a string"
                )


# What tomllib returns (datetime is a date); strict validation takes these as they are.
_TOML_VALUES = (str, int, float, bool, list, dict, datetime.date, datetime.time)


def toml_can_write(annotation: Any) -> bool:
    """True if strict validation of `annotation` accepts values tomllib returns."""
    origin = get_origin(annotation)
    if annotation is Any or annotation is type(None) or origin is Literal:
        return True
    if origin is Annotated:
        inner, *metadata = get_args(annotation)
        return _lax(metadata) or toml_can_write(inner)
    if origin in (list, dict, Union, types.UnionType):
        return all(toml_can_write(arg) for arg in get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, (*_TOML_VALUES, BaseModel))


def _lax(metadata: list[Any]) -> bool:
    return any(isinstance(item, Strict) and not item.strict for item in metadata)


def _gpu_ref(value: Any) -> Any:
    """A GPU as the file names it: an index (a number) or a UUID (a string, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f'a GPU is an index (0, 1, ...) or a UUID ("GPU-..."), got {value!r}')
    if isinstance(value, int) and value < 0:
        raise ValueError(f"GPU index {value} is negative; indices start at 0")
    if isinstance(value, str) and not value.strip():
        raise ValueError("a GPU UUID cannot be empty")
    if isinstance(value, str) and value.strip().isdigit():
        # Else [0, "0"] would be two GPUs, and "0" a UUID no GPU has.
        raise ValueError(
            f"GPU {value!r} is a string: write an index as a number ({value.strip()}),"
            " a UUID as a string"
        )
    return value


GpuRef = Annotated[int | str, BeforeValidator(_gpu_ref)]


def no_gpu_twice(gpus: list[int | str]) -> None:
    seen: set[int | str] = set()
    for gpu in gpus:
        if gpu in seen:
            raise ValueError(f"GPU {gpu!r} is listed twice")
        seen.add(gpu)


def shared_gpus(first: str | list[int | str], second: str | list[int | str]) -> str:
    """Which GPUs two hosts' `gpus` both allow, for a message ("" if none)."""
    if "none" in (first, second):
        return ""
    if first == "all" or second == "all":
        listed = second if first == "all" else first
        return "every GPU" if listed == "all" else f"GPUs {listed}"
    both = [gpu for gpu in first if gpu in second]
    return f"GPUs {both}" if both else ""


ANY_ADDRESS = "*"
LOOPBACK = "loopback"


def socket_address(address: str) -> str:
    """An address as a listening socket sees it: every loopback spelling (localhost,
    127.0.0.1, ::1) is one, 0.0.0.0 and :: are "*" (every address), IPs in one spelling."""
    text = address.strip().strip("[]").lower()
    if text == "localhost":
        return LOOPBACK
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text  # a DNS name
    if ip.is_unspecified:
        return ANY_ADDRESS
    return LOOPBACK if ip.is_loopback else ip.compressed


def may_share_socket(first: str, second: str) -> bool:
    """Whether listeners on these two addresses and one port collide on one machine."""
    a, b = socket_address(first), socket_address(second)
    return a == b or ANY_ADDRESS in (a, b)
