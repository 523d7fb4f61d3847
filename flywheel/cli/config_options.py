"""Command-line options generated from a pydantic config, so defaults, types and help have one source.

``flywheel train`` used to retype 14 of ``TrainConfig``'s defaults and help texts, and they drifted.
Here each option is built from the field itself: its type, its description and, in the help, its
default. An option left out is not passed on at all, so the config's own default applies.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

Command = TypeVar("Command", bound=Callable[..., Any])


def _option(name: str, field: FieldInfo) -> inspect.Parameter | None:
    """A keyword parameter typer turns into ``--name``; None for a field the command line cannot carry."""
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None: the X
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is not Literal and annotation not in (int, float, bool, str, Path):
        return None
    default = "none" if field.default is None else field.default
    option = typer.Option(None, help=f"{field.description} Default: {default}.", show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=typing.Optional[annotation])  # noqa: UP045  # a runtime type for typer


def config_options(model: type[BaseModel]) -> Callable[[Command], Command]:
    """Give a typer command one option per field of ``model``; the command receives them as ``config: model``.

    The command must have a keyword parameter ``config``; it is left out of the command line and filled
    with ``model(**given)``. A value the model refuses ends the command with the model's own message.
    A field named like one of the command's own parameters is left to the command (``flywheel demo``'s
    ``--seed`` seeds its users and its training alike), which sets it on ``config`` itself.
    """
    def wrap(command: Command) -> Command:
        from flywheel.cli.common import fail

        signature = inspect.signature(command, eval_str=True)  # real Annotated[..., typer.Option] objects for typer
        own = [p for p in signature.parameters.values() if p.name != "config"]
        options = [p for name, field in model.model_fields.items()
                   if name not in signature.parameters and (p := _option(name, field)) is not None]
        names = {p.name for p in options}

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            given = {name: values.pop(name) for name in list(values) if name in names}
            try:
                config = model(**{name: value for name, value in given.items() if value is not None})
            except ValidationError as exc:
                fail("; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-') or 'config'}: {e['msg']}"
                               for e in exc.errors()))
            return command(**values, config=config)

        run.__signature__ = signature.replace(parameters=own + options)  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return wrap
